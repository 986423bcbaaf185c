"""Networks shared by several kinds: the trunks, how their weights are loaded and their input normalised."""
