"""The targets under test: the backend itself (direct), switchyard
standalone, nginx and HAProxy, each configured as a one-worker reverse
proxy in front of the same echo backend, with access logs off.

Fairness: nginx keeps upstream connections alive (`keepalive`,
`proxy_http_version 1.1`, empty `Connection` header unless the client
asks for an upgrade) and does not close client connections after 1000
requests; HAProxy reuses server connections across clients
(`http-reuse always`). All terminate TLS 1.3 only, with the same ECDSA
P-256 certificate, and speak HTTP/1.1 to the backend. None of them lets a
client resume a TLS session (nginx and HAProxy still send TLS 1.3 tickets,
which no server will take back): wrk resumes whenever the server lets it,
and S4 measures full handshakes.
"""

import base64
import os
import subprocess

import procs

HOST = "bench.local"
PROXY_CORE = 0
LOAD_CORE = 1


class Target:
    def __init__(self, name, http_port, https_port=None, proc=None):
        self.name = name
        self.http_port = http_port
        self.https_port = https_port
        self.proc = proc

    def pids(self):
        """Processes whose CPU and memory count for this target."""
        if self.proc is None:
            return []
        return [self.proc.pid] + procs.children(self.proc.pid)

    def url(self, path, tls=False):
        if tls:
            return f"https://127.0.0.1:{self.https_port}{path}"
        return f"http://127.0.0.1:{self.http_port}{path}"


def make_cert(work):
    key, crt = os.path.join(work, "tls.key"), os.path.join(work, "tls.crt")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
         "-keyout", key, "-out", crt],
        check=True, capture_output=True)
    pem = os.path.join(work, "tls.pem")  # HAProxy wants both in one file
    with open(pem, "w") as out:
        out.write(open(crt).read() + open(key).read())
    return crt, key, pem


def start_backend(binary, work):
    port = procs.free_port()
    proc = procs.start([binary, "echo", "--addr", f"127.0.0.1:{port}", "--name", "bench", "--workers", "1"],
                       os.path.join(work, "echo.log"), LOAD_CORE)
    procs.wait_http(port, HOST, timeout=20)
    return Target("direct", port, None, None), proc


# === switchyard ===

def service_manifests(backend_port):
    return f"""apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: bench}}
spec: {{ports: [{{name: http, port: 80, targetPort: {backend_port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: bench-1, namespace: bench, labels: {{kubernetes.io/service-name: bench}}}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
"""


def ingress(name, host, tls_secret=None):
    tls = f"\n  tls: [{{hosts: [{host}], secretName: {tls_secret}}}]" if tls_secret else ""
    # Plain HTTP keeps being served (no redirect) so one host serves S1 and S4.
    notes = ", annotations: {switchyard.dev/ssl-redirect: 'false'}" if tls_secret else ""
    return f"""---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: bench{notes}}}
spec:
  ingressClassName: switchyard{tls}
  rules:
  - host: {host}
    http:
      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: bench, port: {{number: 80}}}}}}}}]
"""


def route_hosts(routes):
    """Hosts of an `routes`-route configuration; the measured one is in the middle."""
    if routes <= 1:
        return [HOST]
    hosts = [f"r{i}.{HOST}" for i in range(routes - 1)]
    hosts.insert(routes // 2, HOST)
    return hosts


def write_manifests(directory, backend_port, routes=1, cert=None):
    os.makedirs(directory, exist_ok=True)
    docs = [service_manifests(backend_port)]
    if cert:
        crt, key = (base64.b64encode(open(p, "rb").read()).decode() for p in cert)
        docs.append(f"""---
apiVersion: v1
kind: Secret
metadata: {{name: bench-tls, namespace: bench}}
type: kubernetes.io/tls
data: {{tls.crt: {crt}, tls.key: {key}}}
""")
    for i, host in enumerate(route_hosts(routes)):
        docs.append(ingress(f"bench-{i}", host, "bench-tls" if cert and host == HOST else None))
    with open(os.path.join(directory, "bench.yaml"), "w") as f:
        f.write("".join(docs))


def start_switchyard(binary, work, backend_port, name="switchyard", routes=1, cert=None, tls=False):
    directory = os.path.join(work, f"manifests-{name}")
    write_manifests(directory, backend_port, routes, cert)
    http_port, admin_port = procs.free_port(), procs.free_port()
    argv = [binary, "standalone", "--manifests", directory, "--http-addr", f"127.0.0.1:{http_port}",
            "--admin-addr", f"127.0.0.1:{admin_port}", "--workers", "1", "--log", "warn"]
    https_port = None
    if tls:
        https_port = procs.free_port()
        argv += ["--https-addr", f"127.0.0.1:{https_port}", "--tls-min-version", "1.3", "--hsts", "",
                 "--tls-session-cache", "0"]
    proc = procs.start(argv, os.path.join(work, f"{name}.log"), PROXY_CORE)
    target = Target(name, http_port, https_port, proc)
    target.manifests = directory
    return target


# === nginx ===

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    # 64 KiB responses fit in memory buffers (no temp files).
    proxy_buffers 16 16k;
    proxy_busy_buffers_size 64k;
    proxy_max_temp_file_size 0;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{http};
        listen 127.0.0.1:{https} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(work, backend_port, cert, nofile):
    http_port, https_port = procs.free_port(), procs.free_port()
    os.makedirs(os.path.join(work, "nginx-tmp"), exist_ok=True)
    os.chmod(os.path.join(work, "nginx-tmp"), 0o777)
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(work=work, backend=backend_port, http=http_port, https=https_port,
                                  crt=cert[0], key=cert[1], nofile=nofile, conns=nofile - 100))
    proc = procs.start(["nginx", "-c", conf, "-p", work], os.path.join(work, "nginx.log"), PROXY_CORE)
    return Target("nginx", http_port, https_port, proc)


# === HAProxy ===

HAPROXY_CONF = """global
    nbthread 1
    maxconn {maxconn}
    log stdout format raw local0 emerg
    tune.ssl.cachesize 0
defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    timeout tunnel 1h
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:{http}
    bind 127.0.0.1:{https} ssl crt {pem} ssl-min-ver TLSv1.3 alpn http/1.1 no-tls-tickets
    default_backend echo
backend echo
    server echo 127.0.0.1:{backend}
"""


def start_haproxy(work, backend_port, cert, maxconn):
    http_port, https_port = procs.free_port(), procs.free_port()
    conf = os.path.join(work, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_CONF.format(backend=backend_port, http=http_port, https=https_port, pem=cert[2],
                                    maxconn=maxconn))
    proc = procs.start(["haproxy", "-db", "-f", conf], os.path.join(work, "haproxy.log"), PROXY_CORE)
    return Target("haproxy", http_port, https_port, proc)
