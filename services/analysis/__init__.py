"""The analysis service and its workers.

gRPC's C core must not handle fork() in these processes. The workers run git in child processes, and uvloop (see
`libs.common.service.run_async`) starts them with fork(), not vfork(): gRPC's fork handlers then ran in every child
and, while the worker's gRPC channels were busy, crashed some of them before git even started (SIGSEGV, or SIGABRT on
a failed check in ev_epoll1_linux.cc), which failed their analyses with ERR_FETCH_005. Nothing here uses gRPC in a
forked child (the engine's process pool spawns), so the fork support has nothing to do. The core reads the variable
once, when grpc is first imported: this package is imported before it, by `python -m services.analysis`.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
