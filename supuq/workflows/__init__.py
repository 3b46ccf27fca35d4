"""What the commands do, built from the core, `supuq.tracking` and `supuq.sweep`: one training run
(`single`: `supuq train`, `supuq evaluate`), the retrain over seeds (`retrain`: `supuq best --retrain`), the
Table 2/3 model with the verdict rule and the smoke thresholds (`tables`), the paper's published values
(`published`) and the comparison study (`study`: `supuq results`).

No re-exports: `retrain` and `study` pull in the sweep's selection rule, `single` does not.
"""
