"""Judging quality scores: ERC/EDC maths, the one pair report, the held-out reports after
training, benchmark inputs, IJB-C, training-set analysis, an external FR model and the
evaluate command. Imports serve, data and models.

  erc, edc      the released ERC (bit for bit) and the standard EDC (fiqat's conventions)
  pair_report   image qualities × one FR model's pair scores → both tables
  plots         the tables' plots and CSVs
  heldout       the report after training: synthetic identities, or real faces' pairs
  realfaces     the real-face report against no-training baselines
  benchmarks    readers of pair benchmarks, quality CSVs and embedding files
  ijbc          IJB-C 1:1 with quality-weighted templates
  analyze       training-set CCS/NNCCS/CR and their ERC
  dlib_fr       dlib's ResNet as an FR model other than the one that learned the quality
  evaluate      `python -m crfiqa_jax.evaluate`
"""
