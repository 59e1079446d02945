"""`hostcollector top`: a live terminal view of one host's VMs and tenants, like top(1).

It reads the daemon's JSON API (/api/v1: vms, gpus, vfs, sources), locally or on a remote host,
and shows per VM (or per tenant, summed) CPU cores used, memory, disk and network throughput,
GPU utilization and SR-IOV VF throughput. The daemon serves counters; rates are computed here
from the two most recent distinct samples of each VM and VF.

Layers, each usable alone:
- client.py: `Client` and `fetch()`, urllib only, any failure a `FetchError`;
- documents.py: `parse_documents()`, the API's JSON -> typed `Documents`, tolerant of absent fields;
  every text in them `visible` (text.py: tenants' text escaped, measured in terminal cells);
- rows.py: `History.advance()`, pure, keeps per VM/VF the last two samples read at different times;
- layout.py: `frame()`, pure, history + view + width -> lines of text; `--once` prints it and the
  curses loop draws it.
- screen.py: the curses loop and `--once`.
"""
