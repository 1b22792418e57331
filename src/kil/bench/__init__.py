"""Benchmarks: measurements printed side by side in one run (`kil bench <suite>`)."""
