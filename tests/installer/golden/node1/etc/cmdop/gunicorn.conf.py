# managed by cmdop-install, do not edit (site golden, host node1)
# gunicorn settings for cmdop_server; SIGHUP (systemctl reload) re-reads this file.

# only nginx reaches gunicorn, through a unix socket (no TCP port at all). Under systemd,
# cmdop-server.socket holds it and hands it over listening (LISTEN_FDS), which wins over
# this line; gunicorn binds it itself only when started by hand
bind = "unix:/run/cmdop/gunicorn.sock"
# what gunicorn creates is 0660 at most: the nginx user gets in through the shared group
umask = 0o117
# gunicorn's native ASGI worker: an agent's long-poll waits on an event loop, not a thread,
# so one worker holds thousands of them (cmdop_server.asgi serves the sync API too)
worker_class = "asgi"
workers = 4
# concurrent connections per worker: every enrolled agent keeps one long-poll open
worker_connections = 4096
# agent long-polls last up to 25s: time out only after that
timeout = 55
graceful_timeout = 30
keepalive = 5
# settings are re-imported on SIGHUP only without preloading (secret rotation reloads), and
# each new worker imports the app itself (a deploy's switch to a new release reloads)
preload_app = False
# the master enters the release `current` links to at start and on every SIGHUP, so each
# worker's working directory names the release it imported (`cmdop-install status` reads it)
chdir = "/opt/cmdop/server/current/venv"
# no control socket: the home folder is read-only under ProtectSystem=strict, and nothing
# but systemd manages this service
control_socket_disable = True
# trust X-Forwarded-* only from nginx on this host
forwarded_allow_ips = "127.0.0.1,::1"
# bounded request headers: no memory exhaustion through giant headers
limit_request_line = 8190
limit_request_fields = 100
accesslog = "-"
errorlog = "-"
loglevel = "info"


# gunicorn's asgi worker serves the socket through asyncio's create_server, which calls
# listen() on it again with asyncio's default backlog, 100: gunicorn's own `backlog` (2048,
# as cmdop-server.socket's Backlog=) is not passed on, and the last listen() on the shared
# socket sets its accept queue. A wave of agents' polls (all of them reconnecting after
# nginx or the network came back) overflowed 100 while the workers were busy: nginx's
# connect() failed with EAGAIN and the agents got 502 (1,422 of 2,000 on a lab host).
# Each worker's listen() therefore keeps gunicorn's backlog.
def post_worker_init(worker):
    create_server = worker.loop.create_server

    async def create_server_with_backlog(*args, **kwargs):
        return await create_server(*args, **{**kwargs, "backlog": worker.cfg.backlog})

    worker.loop.create_server = create_server_with_backlog
