"""The asset graph: studysets, recordings, sortings and their checks, comparisons, results, workspace."""
