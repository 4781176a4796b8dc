"""Reports: a sweep's results collected and written (`collect`), tables in markdown
(`tables`), a sweep's plots (`plots`) and the job commands' plots (`job_plots`)."""
