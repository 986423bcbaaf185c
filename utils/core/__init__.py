"""What every stage shares and no stage owns: strict configs, atomic files, logging, the device and
precision choice, plugins, and how figures are shown (tables, plots)."""
