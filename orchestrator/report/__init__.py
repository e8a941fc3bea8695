"""Reports: what a sweep or search recorded in MLflow, as tables and figures.

- `record`: the FINISHED runs read back from MLflow and the table helpers sections share;
- `sweep`, `search`: the sections of a report (a new section: a function there, listed in `build`);
- `figures`: plain data in, one PNG out;
- `build`: the assembly (HTML page, CSVs, logging to the parent run);
- `compare`: two runs side by side.
"""
