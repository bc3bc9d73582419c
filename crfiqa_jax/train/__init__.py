"""Training: config loading, the main job and its preflight, the trainer and the step, the
optimiser, IG-FIQA's augmentation, the input pipeline, warm starts, train-state
checkpoints and the TPU plan. Imports evaluation, serve, data and models; nothing imports
train but the entry points.

  config          named configs and --config.key=value overrides
  job             the main job: data, checks before step 1, training, the held-out report
  trainer         the Trainer (mesh, shardings, the jitted step) and the training loop
  step            TrainState and the one train step (CR-FIQA and IG-FIQA)
  optim           SGD as the released recipe (decay, clipping, the lr schedule)
  augment         IG-FIQA's on-device augmentations
  input_pipeline  grain over the record files: shuffle, per-process slices, decode, flip
  warmstart       starting from a trained model (fine-tuning, the "on top" ablation)
  checkpoint      orbax steps of the train state and the data position; elastic resume
  plan            AOT-compiling the train step for a TPU topology
"""
