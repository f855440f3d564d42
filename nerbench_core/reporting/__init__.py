"""Reporting, free of torch: records and their store, saved predictions, baselines and the regression gate, the
tables (a column registry), exports, plots, paired verdicts and the report command."""
