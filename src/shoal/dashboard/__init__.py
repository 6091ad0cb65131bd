"""``shoal dashboard``: a web view of runs (extra ``shoal[dashboard]``: Starlette, uvicorn)."""
