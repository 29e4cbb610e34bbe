from setuptools import find_packages, setup

# The repository's serving/ and tfx_pipeline/ folders install as reloop2_serving and reloop2_tfx,
# so that an installed reloop2-tf puts no generic top-level name (`serving`) into site-packages.
PACKAGE_DIR = {"reloop2_serving": "serving", "reloop2_tfx": "tfx_pipeline"}
PACKAGES = find_packages(include=["reloop2_tf", "reloop2_tf.*"])
for name, folder in PACKAGE_DIR.items():
    PACKAGES += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    name="reloop2-tf",
    version="0.1.0",
    description="ReLoop2 error-compensation memories for Keras, TFX and TF Serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"reloop2_serving": ["*.config", "*.pbtxt", "*.yaml", "*.txt"]},
    install_requires=[
        "tensorflow>=2.16,<2.17",
        "tf-keras>=2.16,<2.17",
        "tensorflow-recommenders>=0.7.7",
        "tensorflow-serving-api>=2.16,<2.17",
        "grpcio",
        "numpy<2",
        "pandas",
        "scikit-learn",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"tfx": ["tfx[kfp]==1.16.0"], "faiss": ["faiss-cpu"]},
    entry_points={"console_scripts": ["reloop2=reloop2_tf.cli.main:main"]},
)
