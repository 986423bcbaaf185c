"""What every stage shares and no stage owns: strict configs and the training loop's settings (read by
prediction too), atomic files, logging, the device and precision choice, plugins, how figures are shown
(tables, plots), and the Kaggle notebook's runtime helpers (standard library only)."""
