"""``idml bench``'s machinery: :mod:`~idml.bench.rounds` times variants fairly (a process each,
shuffled rounds, paired ratios, an A/A check); :mod:`~idml.bench.step` defines the training-step
variants and their report."""
