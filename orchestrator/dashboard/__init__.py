"""`gpurun dashboard`: the ledger and the run directories as read-only web pages (docs/DASHBOARD.md).

access.py (the token, GET only, the security headers), app.py (the routes), pages.py (the
templates, masked and escaped), runs_view.py / run_view.py / money_view.py / curves.py (what each
page shows, from the functions the CLI uses), serve.py (bind, print the URL once, serve).
"""
