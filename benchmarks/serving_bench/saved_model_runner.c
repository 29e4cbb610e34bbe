/* Loads a SavedModel through TensorFlow's C API, as tensorflow_model_server's C++ loader does,
 * and runs signature tensors by name from several threads.
 *
 *     saved_model_runner EXPORT_DIR PLAN_FILE
 *
 * TF_LoadSessionFromSavedModel (tag "serve") wraps the C++ LoadSavedModel that TF Serving links.
 * The program knows nothing about ReLoop2: tests/test_c_api_loader.py resolves the SignatureDef
 * tensor names in Python and writes a plan, one directive per line:
 *
 *     step                        calls up to the next "end" start together
 *     call THREADS REPEAT         THREADS threads each run the call REPEAT times
 *     in TENSOR FILE              feed TENSOR ("op:index") from FILE
 *     out TENSOR FILE             fetch TENSOR; thread k writes its last value to FILE.k
 *     id TENSOR PREFIX            feed TENSOR a new scalar string on every run,
 *                                 "PREFIX.<thread>.<run>" (a fresh write_id per write)
 *     end
 *
 * Tensor files: int32 dtype (TF_DataType), int32 rank, int64 dims[rank], then the values:
 * raw little-endian numbers, or for TF_STRING, each element as uint64 length + bytes.
 * Each step prints its wall time ("step N: S s", from the first thread's start to the last
 * one's end): benchmarks/loader_benchmark.py times the signatures with it.
 * Exit status: 0 on success; 1 with a message on stderr naming the failing call otherwise.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

#define MAX_TENSORS 32
#define MAX_CALLS 8
#define MAX_THREADS 16

static void die(const char* what, const char* detail) {
  fprintf(stderr, "saved_model_runner: %s: %s\n", what, detail);
  exit(1);
}

static void read_exact(FILE* f, void* buf, size_t n, const char* path) {
  if (n && fread(buf, 1, n, f) != n) die("short read", path);
}

static TF_Tensor* read_tensor(const char* path) {
  FILE* f = fopen(path, "rb");
  if (!f) die("cannot open", path);
  int32_t dtype, rank;
  read_exact(f, &dtype, 4, path);
  read_exact(f, &rank, 4, path);
  if (rank < 0 || rank > 8) die("bad rank in", path);
  int64_t dims[8];
  int64_t count = 1;
  read_exact(f, dims, (size_t)rank * 8, path);
  for (int i = 0; i < rank; i++) count *= dims[i];
  TF_Tensor* t;
  if (dtype == TF_STRING) {
    t = TF_AllocateTensor(TF_STRING, dims, rank, (size_t)count * sizeof(TF_TString));
    TF_TString* s = (TF_TString*)TF_TensorData(t);
    for (int64_t i = 0; i < count; i++) {
      uint64_t len;
      read_exact(f, &len, 8, path);
      char* buf = malloc(len ? len : 1);
      read_exact(f, buf, len, path);
      TF_StringInit(&s[i]);
      TF_StringCopy(&s[i], buf, len);
      free(buf);
    }
  } else {
    size_t size = TF_DataTypeSize((TF_DataType)dtype);
    if (size == 0) die("unsupported dtype in", path);
    t = TF_AllocateTensor((TF_DataType)dtype, dims, rank, (size_t)count * size);
    read_exact(f, TF_TensorData(t), TF_TensorByteSize(t), path);
  }
  fclose(f);
  return t;
}

static void write_tensor(const char* path, const TF_Tensor* t) {
  FILE* f = fopen(path, "wb");
  if (!f) die("cannot write", path);
  int32_t dtype = TF_TensorType(t), rank = TF_NumDims(t);
  fwrite(&dtype, 4, 1, f);
  fwrite(&rank, 4, 1, f);
  for (int i = 0; i < rank; i++) {
    int64_t d = TF_Dim(t, i);
    fwrite(&d, 8, 1, f);
  }
  if (dtype == TF_STRING) {
    const TF_TString* s = (const TF_TString*)TF_TensorData(t);
    int64_t count = TF_TensorElementCount(t);
    for (int64_t i = 0; i < count; i++) {
      uint64_t len = TF_StringGetSize(&s[i]);
      fwrite(&len, 8, 1, f);
      fwrite(TF_StringGetDataPointer(&s[i]), 1, len, f);
    }
  } else {
    fwrite(TF_TensorData(t), 1, TF_TensorByteSize(t), f);
  }
  fclose(f);
}

/* "name:index" -> the graph output it names. */
static TF_Output resolve(TF_Graph* graph, const char* tensor) {
  char op[512];
  const char* colon = strrchr(tensor, ':');
  size_t n = colon ? (size_t)(colon - tensor) : strlen(tensor);
  if (n >= sizeof(op)) die("tensor name too long", tensor);
  memcpy(op, tensor, n);
  op[n] = '\0';
  TF_Operation* oper = TF_GraphOperationByName(graph, op);
  if (!oper) die("no such operation in the graph", tensor);
  TF_Output out = {oper, colon ? atoi(colon + 1) : 0};
  return out;
}

typedef struct {
  int threads, repeat, n_in, n_out, line, id_input; /* id_input: -1, or the "id" input */
  TF_Output in[MAX_TENSORS], out[MAX_TENSORS];
  TF_Tensor* values[MAX_TENSORS];
  char out_path[MAX_TENSORS][1024];
  char id_prefix[256];
} Call;

/* A scalar TF_STRING tensor holding "prefix.thread.run". */
static TF_Tensor* id_tensor(const char* prefix, int thread, int run) {
  char text[320];
  int len = snprintf(text, sizeof(text), "%s.%d.%d", prefix, thread, run);
  TF_Tensor* t = TF_AllocateTensor(TF_STRING, NULL, 0, sizeof(TF_TString));
  TF_TString* s = (TF_TString*)TF_TensorData(t);
  TF_StringInit(s);
  TF_StringCopy(s, text, (size_t)len);
  return t;
}

typedef struct {
  TF_Session* session;
  Call* call;
  int index;
  char error[1024];
} Job;

static void* run_job(void* arg) {
  Job* job = (Job*)arg;
  Call* c = job->call;
  TF_Status* status = TF_NewStatus();
  TF_Tensor* outputs[MAX_TENSORS];
  TF_Tensor* values[MAX_TENSORS];
  memcpy(values, c->values, sizeof(values));
  for (int r = 0; r < c->repeat; r++) {
    memset(outputs, 0, sizeof(outputs));
    if (c->id_input >= 0) values[c->id_input] = id_tensor(c->id_prefix, job->index, r);
    TF_SessionRun(job->session, NULL, c->in, values, c->n_in, c->out, outputs, c->n_out,
                  NULL, 0, NULL, status);
    if (c->id_input >= 0) TF_DeleteTensor(values[c->id_input]);
    if (TF_GetCode(status) != TF_OK) {
      snprintf(job->error, sizeof(job->error), "plan line %d, thread %d, run %d: %s", c->line,
               job->index, r, TF_Message(status));
      break;
    }
    for (int k = 0; k < c->n_out; k++) {
      if (r == c->repeat - 1) {
        char path[1100];
        snprintf(path, sizeof(path), "%s.%d", c->out_path[k], job->index);
        write_tensor(path, outputs[k]);
      }
      TF_DeleteTensor(outputs[k]);
    }
  }
  TF_DeleteStatus(status);
  return NULL;
}

static int run_step(TF_Session* session, Call* calls, int n_calls) {
  static Job jobs[MAX_CALLS * MAX_THREADS];
  pthread_t tids[MAX_CALLS * MAX_THREADS];
  int n = 0, failed = 0;
  for (int c = 0; c < n_calls; c++) {
    for (int t = 0; t < calls[c].threads; t++, n++) {
      jobs[n].session = session;
      jobs[n].call = &calls[c];
      jobs[n].index = t;
      jobs[n].error[0] = '\0';
      if (pthread_create(&tids[n], NULL, run_job, &jobs[n]) != 0) die("pthread_create", "");
    }
  }
  for (int i = 0; i < n; i++) {
    pthread_join(tids[i], NULL);
    if (jobs[i].error[0]) {
      fprintf(stderr, "saved_model_runner: %s\n", jobs[i].error);
      failed = 1;
    }
  }
  for (int c = 0; c < n_calls; c++)
    for (int k = 0; k < calls[c].n_in; k++)
      if (k != calls[c].id_input) TF_DeleteTensor(calls[c].values[k]);
  return failed;
}

int main(int argc, char** argv) {
  if (argc != 3) die("usage", "saved_model_runner EXPORT_DIR PLAN_FILE");
  TF_Status* status = TF_NewStatus();
  TF_Graph* graph = TF_NewGraph();
  TF_SessionOptions* options = TF_NewSessionOptions();
  const char* tags[] = {"serve"};
  TF_Session* session =
      TF_LoadSessionFromSavedModel(options, NULL, argv[1], tags, 1, graph, NULL, status);
  if (TF_GetCode(status) != TF_OK) die("TF_LoadSessionFromSavedModel", TF_Message(status));
  printf("loaded %s with TensorFlow %s\n", argv[1], TF_Version());

  FILE* plan = fopen(argv[2], "r");
  if (!plan) die("cannot open", argv[2]);
  static Call calls[MAX_CALLS];
  int n_calls = 0, line_no = 0, failed = 0, steps = 0;
  char line[4096], word[16], a[2048], b[2048];
  while (fgets(line, sizeof(line), plan)) {
    line_no++;
    if (sscanf(line, "%15s", word) != 1) continue;
    if (!strcmp(word, "step")) {
      n_calls = 0;
    } else if (!strcmp(word, "call")) {
      if (n_calls == MAX_CALLS) die("too many calls in a step", line);
      Call* c = &calls[n_calls++];
      memset(c, 0, sizeof(*c));
      c->line = line_no;
      c->id_input = -1;
      if (sscanf(line, "call %d %d", &c->threads, &c->repeat) != 2 || c->threads < 1 ||
          c->threads > MAX_THREADS || c->repeat < 1)
        die("bad call line", line);
    } else if (!strcmp(word, "id")) {
      if (n_calls == 0 || sscanf(line, "%*s %2047s %255s", a, b) != 2) die("bad line", line);
      Call* c = &calls[n_calls - 1];
      if (c->n_in == MAX_TENSORS || c->id_input >= 0) die("too many inputs", line);
      c->in[c->n_in] = resolve(graph, a);
      memcpy(c->id_prefix, b, strlen(b) + 1);
      c->id_input = c->n_in++;
    } else if (!strcmp(word, "in") || !strcmp(word, "out")) {
      if (n_calls == 0 || sscanf(line, "%*s %2047s %2047s", a, b) != 2) die("bad line", line);
      Call* c = &calls[n_calls - 1];
      if (word[0] == 'i') {
        if (c->n_in == MAX_TENSORS) die("too many inputs", line);
        c->in[c->n_in] = resolve(graph, a);
        c->values[c->n_in++] = read_tensor(b);
      } else {
        if (c->n_out == MAX_TENSORS) die("too many outputs", line);
        if (strlen(b) >= 1000) die("output path too long", b);
        c->out[c->n_out] = resolve(graph, a);
        memcpy(c->out_path[c->n_out++], b, strlen(b) + 1);
      }
    } else if (!strcmp(word, "end")) {
      struct timespec start, stop;
      clock_gettime(CLOCK_MONOTONIC, &start);
      failed |= run_step(session, calls, n_calls);
      clock_gettime(CLOCK_MONOTONIC, &stop);
      printf("step %d: %.6f s\n", ++steps,
             (double)(stop.tv_sec - start.tv_sec) + 1e-9 * (double)(stop.tv_nsec - start.tv_nsec));
      n_calls = 0;
    } else {
      die("unknown directive", line);
    }
  }
  fclose(plan);
  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  printf("ran %d steps%s\n", steps, failed ? " with errors" : "");
  return failed;
}
