"""``idml bench``'s machinery: :mod:`~idml.bench.rounds` times variants fairly (a process each,
shuffled rounds, paired ratios, an A/A check); :mod:`~idml.bench.step` defines the training-step
variants and their report; :mod:`~idml.bench.pipeline` times the ImageNet input pipeline alone
(``--input_pipeline``), beside the official worker transform (:mod:`~idml.bench.official_transform`)."""
