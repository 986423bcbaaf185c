"""The data and its formats: reading radiographs, label files and folds, box formats, preparation,
datasets and augmentation presets, the prediction schema, the submission format, the pseudo-label rules and the
synthetic datasets."""
