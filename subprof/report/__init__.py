"""The procurement report: tables (pandas), the summary in words, and the self-contained HTML page (plotly)."""
