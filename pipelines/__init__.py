"""Data pipelines: UTKFace indexing, labels and the shared train/val/test split."""
