"""What the soak (``tests.soak``) and the benchmark (``tests.bench``) share.

- ``serving``: aiohttp apps served on 127.0.0.1 from the running process.
- ``spawn``: child processes started in the repository with an exact environment.
- ``procfs``: what ``/proc`` says about a process: its descriptors, its sockets, its CPU.
- ``workers``: load as clients repeating an operation until a deadline.
- ``text``: how the reports print: sizes in MiB, aligned rows, Markdown tables.
"""
