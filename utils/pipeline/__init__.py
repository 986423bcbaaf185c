"""The stages above the kinds: the train-all pipeline and its stages (train_all.py), the command line the
training scripts share and the one way a script trains a kind (cli.py), and round one's ensemble labelling
unlabelled radiographs for round two (pseudo_label_stage.py)."""
