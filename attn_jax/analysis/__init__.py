"""Looking at trained runs: evaluation of checkpoints (loss, BLEU, decoding), attention
heatmaps and the figures of the documentation (docs/experiments.md).

Submodules are imported on use: `evaluation` (`evaluate_checkpoint`, `restore`), `heatmaps`
(`save_heatmap`, `token_text`), `figures` (matplotlib figures of attention maps, gates and
learning curves).
"""
