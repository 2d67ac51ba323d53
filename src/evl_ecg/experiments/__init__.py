"""Experiments on top of training and evaluation: the study of the paper's Tables (:mod:`.study`), the label-budget
study (:mod:`.label_study`) and the demo (:mod:`.demo`). Each drives ``evl-ecg`` commands (training, evaluation) and
reports with :mod:`evl_ecg.eval`'s statistics and figures (each study writes the Markdown table of its own rows); no
stage below imports this one."""
