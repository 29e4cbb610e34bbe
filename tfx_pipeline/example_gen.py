"""CsvExampleGen with stable column types: ids, side features and history are always strings.

The stock CsvExampleGen infers every column's type from the rows of each run: MovieLens'
``release_year`` is INT in a window of clean years and BYTES in one that holds its ``"V"`` or
``"unkonwn"`` rows, and a user id column flips the same way when a non-numeric id appears.
ExampleValidator would then flag honest data as a type change, and the model's serving inputs
would change dtype from run to run. The canonical CSV (``reloop2 data prepare``) keeps every
feature as a string, so here only ``label`` and ``timestamp`` are typed by inference (a
non-integer label or time still shows up as a type anomaly) and every other column is BYTES.
An empty cell is a missing feature, as in the stock component.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.v1.components import CsvExampleGen
from tfx_bsl.coders import csv_decoder

INFERRED_COLUMNS = ("label", "timestamp")


def column_infos(inferred: Sequence[csv_decoder.ColumnInfo]) -> list[csv_decoder.ColumnInfo]:
    """The inferred types for ``INFERRED_COLUMNS``, STRING for every other column."""
    return [info if info.name in INFERRED_COLUMNS
            else csv_decoder.ColumnInfo(info.name, csv_decoder.ColumnType.STRING)
            for info in inferred]


def _feature(cell: bytes, column_type: csv_decoder.ColumnType) -> tf.train.Feature:
    if not cell or column_type == csv_decoder.ColumnType.UNKNOWN:
        return tf.train.Feature()
    if column_type == csv_decoder.ColumnType.INT:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(cell)]))
    if column_type == csv_decoder.ColumnType.FLOAT:
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(cell)]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[cell]))


class _CellsToExample(beam.DoFn):
    def process(self, cells: list[bytes],
                infos: list[csv_decoder.ColumnInfo]) -> Iterable[tf.train.Example]:
        if not cells:
            return
        if len(cells) != len(infos):
            raise ValueError(f"CSV row has {len(cells)} cells, the header {len(infos)}: {cells}")
        yield tf.train.Example(features=tf.train.Features(feature={
            info.name: _feature(cell, info.type) for cell, info in zip(cells, infos, strict=True)}))


@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
class _TypedCsvToExample(beam.PTransform):
    """One split's CSV files -> tf.Examples (the ExampleGen executor builds one per split)."""

    def __init__(self, exec_properties: dict, split_pattern: str):
        super().__init__()
        self._pattern = os.path.join(
            exec_properties[standard_component_specs.INPUT_BASE_KEY], split_pattern)

    def expand(self, pipeline: beam.Pipeline) -> beam.PCollection:
        files = fileio.glob(self._pattern)
        if not files:
            raise RuntimeError(f"Split pattern {self._pattern} does not match any files.")
        names = io_utils.load_csv_column_names(files[0])
        for path in files[1:]:
            if io_utils.load_csv_column_names(path) != names:
                raise RuntimeError(f"Files of split {self._pattern} have different headers.")
        cells = (pipeline
                 | "ReadLines" >> beam.io.ReadFromText(self._pattern, skip_header_lines=1)
                 | "ParseCSVLine" >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=","))
                 | "Cells" >> beam.Keys())
        infos = beam.pvalue.AsSingleton(
            cells
            | "InferColumnTypes" >> beam.CombineGlobally(
                csv_decoder.ColumnTypeInferrer(names, skip_blank_lines=True))
            | "StringsExceptLabelAndTime" >> beam.Map(column_infos))
        return cells | "ToTFExample" >> beam.ParDo(_CellsToExample(), infos)


class TypedCsvExecutor(BaseExampleGenExecutor):
    """ExampleGen executor for ``TypedCsvExampleGen``."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _TypedCsvToExample


class TypedCsvExampleGen(CsvExampleGen):
    """``tfx.v1.components.CsvExampleGen`` whose feature columns are always BYTES."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TypedCsvExecutor)
