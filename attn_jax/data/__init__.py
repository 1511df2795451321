"""Data for the training runner: local readers (IDX, image folders/tars, text pairs, TSV),
tokenizers, tfds `data_source` + grain pipelines with resumable, process-sharded batches.

Submodules: `images`, `text`, `pipeline`, `sources` (`build(config)`).
"""
