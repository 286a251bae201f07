"""Open one workspace label in the browser: a sorting or a ground truth, against its ground truth."""
