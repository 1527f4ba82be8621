#!/usr/bin/env bash
# The real node of the testenv (NODE=real): containerd + runc + CNI bridge and
# the upstream kubelet, isolated from the host. Called by up.sh / down.sh; the
# subcommands are also useful by hand:
#
#   node.sh net-up          create the pod bridge (lifeline0) and its addresses
#   node.sh start           start containerd + kubelet in a private mount+pid namespace
#   node.sh import FILE...  import OCI archives into the node's image store (k8s.io namespace)
#   node.sh down            kill the namespace, remove bridge, cgroups, mount points, state
#
# Isolation (see README.md, "Real node"):
#   - containerd and the kubelet run under `unshare --mount --pid --fork`: a
#     private mount namespace (tmpfs over the hard-coded host paths they write
#     to, read-only files over the kernel sysctls the kubelet would rewrite)
#     and their own pid namespace, whose first process is the supervisor here.
#     Killing it kills every process of the node (kubelet, containerd, shims,
#     containers); the kernel drops the namespace's mounts and with them the
#     pods' network namespaces and veth interfaces.
#   - Pods live on the bridge lifeline0 (10.244.0.0/24, the host is .1). CNI
#     uses isGateway=false, ipMasq=false and no default route: a pod reaches
#     only the bridge subnet and the API server's service address 10.96.0.1
#     (assigned to the bridge, so the host answers it itself). ip_forward is
#     never touched: nothing a pod sends can leave the machine.
#   - cgroups live under /lifeline-testenv in every v1 hierarchy, removed by down.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

NODE_NAME="${NODE_NAME:-lifeline-node}"
BRIDGE=lifeline0
POD_SUBNET=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
API_IP=10.96.0.1              # first address of the service range: the `kubernetes` Service
CGROUP_ROOT=/lifeline-testenv
NODE_DIR="$TESTENV_DIR/node"   # containerd root, kubelet config, CNI config, certs
NODE_BIN="$(dirname "$BIN")/testenv-node"
SOCK="$RUN/containerd.sock"
PAUSE_IMAGE="localhost/lifeline-test/pause:3.10"
# Host paths the kubelet and containerd write to no matter what their config
# says; a tmpfs hides each inside the node's mount namespace.
PRIVATE_DIRS=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers
  /usr/libexec/kubernetes /run/containerd /run/netns)

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# true when the real-node testenv in directory $1 has no running node: its run
# was killed before it could stop (a session or CI job ended mid-test), and what it
# left behind (bridge, cgroups, plane processes) is ours to clean up.
owner_gone() {
  ! (RUN="$1/run"; live_pid node >/dev/null)
}

net_up() {
  # only one real node per machine: the bridge and 10.96.0.1:443 are machine-wide
  local owner; owner="$(cat /run/lifeline-testenv.owner 2>/dev/null || true)"
  if [[ -n "$owner" && "$owner" != "$TESTENV_DIR" ]] && owner_gone "$owner"; then
    log "net-up: the bridge's owner $owner has no running node (its run was killed); stopping what it left"
    TESTENV_DIR="$owner" NODE=real "$here/down.sh" || true
    # down.sh removes the bridge and the owner file only while the owner file names it
    if [[ "$(cat /run/lifeline-testenv.owner 2>/dev/null || true)" == "$owner" ]]; then
      ip link del "$BRIDGE" 2>/dev/null || true
      rm -f /run/lifeline-testenv.owner
    fi
    owner=""
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    [[ -z "$owner" || "$owner" == "$TESTENV_DIR" ]] ||
      die "bridge $BRIDGE belongs to another real-node testenv ($owner), whose node is running; run its down.sh first"
  else
    ip link add "$BRIDGE" type bridge
  fi
  echo "$TESTENV_DIR" > /run/lifeline-testenv.owner
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip addr replace "$API_IP/32" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

net_down() {
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -f /run/lifeline-testenv.owner
}

issue_cert() { # name subject
  local name=$1 subj=$2
  [[ -s "$NODE_DIR/$name.crt" ]] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$NODE_DIR/$name.key" -out "$NODE_DIR/$name.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=clientAuth" > "$NODE_DIR/$name.ext"
  openssl x509 -req -in "$NODE_DIR/$name.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -CAcreateserial \
    -CAserial "$NODE_DIR/ca.srl" -days 30 -sha256 -extfile "$NODE_DIR/$name.ext" -out "$NODE_DIR/$name.crt" 2>/dev/null
  rm -f "$NODE_DIR/$name.csr" "$NODE_DIR/$name.ext"
  chmod 600 "$NODE_DIR/$name.key"
}

kubeconfig() { # file user cert key
  source "$RUN/env"
  cat > "$1" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: $APISERVER_URL
    certificate-authority: $CERTS/ca.crt
users:
- name: $2
  user:
    client-certificate: $3
    client-key: $4
contexts:
- name: testenv
  context: {cluster: testenv, user: $2}
current-context: testenv
EOK
}

# Everything the node reads: certificates, kubeconfigs, containerd, CNI and kubelet config.
write_config() {
  mkdir -p "$NODE_DIR"/{containerd,cni/net.d,sysctl,kubelet}
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  issue_cert scheduler "/CN=system:kube-scheduler"
  kubeconfig "$NODE_DIR/kubelet.kubeconfig" "system:node:$NODE_NAME" "$NODE_DIR/kubelet.crt" "$NODE_DIR/kubelet.key"
  kubeconfig "$NODE_DIR/scheduler.kubeconfig" system:kube-scheduler "$NODE_DIR/scheduler.crt" "$NODE_DIR/scheduler.key"

  cat > "$NODE_DIR/containerd/config.toml" <<EOC
version = 2
root = "$NODE_DIR/containerd/root"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # root here lacks CAP_SYS_RESOURCE: never try to lower a container's OOM score below ours
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
    max_conf_num = 1
EOC

  cat > "$NODE_DIR/cni/net.d/10-lifeline-testenv.conflist" <<EON
{
  "cniVersion": "1.0.0",
  "name": "lifeline-testenv",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.250", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    }
  ]
}
EON

  # The values the kubelet wants; bind-mounted read-only over /proc/sys so it
  # finds them already set and leaves the host's settings alone.
  local kv
  for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
            kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    mkdir -p "$NODE_DIR/sysctl/$(dirname "${kv%%=*}")"
    echo "${kv#*=}" > "$NODE_DIR/sysctl/${kv%%=*}"
  done

  local ports; mapfile -t ports < <("$BIN" freeport 2)
  cat > "$NODE_DIR/kubelet/config.yaml" <<EOK
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: ${ports[0]}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${ports[1]}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $CERTS/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
# This host mounts cgroup v1 controllers (a v1/v2 hybrid inside a container),
# with the cgroupfs layout: set what kind sets for the same situation.
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
resolvConf: ""
clusterDomain: cluster.local
volumePluginDir: /usr/libexec/kubernetes/kubelet-plugins/volume/exec
# Tests fill the disk for a moment; never evict or garbage-collect the images
# we imported (there is no registry to pull them again).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
serializeImagePulls: false
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
maxPods: 64
shutdownGracePeriod: 0s
EOK
}

# The cgroup directories the kubelet's cgroupRoot lives in: one per v1 hierarchy
# (this host), or the one unified directory on a cgroup v2 host.
cgroup_dirs() {
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    echo "/sys/fs/cgroup${CGROUP_ROOT}"
    return
  fi
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h" ]] && echo "${h%/}${CGROUP_ROOT}"
  done
}

cgroups_up() {
  local d parent
  while read -r d; do
    mkdir -p "$d"
    parent="$(dirname "$d")"
    if [[ -f "$parent/cpuset.cpus" && ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
      # a new v1 cpuset starts empty: no task could join it
      cat "$parent/cpuset.cpus" > "$d/cpuset.cpus"
      cat "$parent/cpuset.mems" > "$d/cpuset.mems"
    fi
  done < <(cgroup_dirs)
}

cgroups_down() {
  local d sub left
  for _ in $(seq 20); do
    left=0
    while read -r d; do
      [[ -d "$d" ]] || continue
      while read -r sub; do rmdir "$sub" 2>/dev/null || left=1; done < <(find "$d" -depth -type d)
    done < <(cgroup_dirs)
    ((left)) || return 0
    sleep 0.25
  done
  log "node: some cgroups under $CGROUP_ROOT are still busy"
}

# The supervisor: pid 1 of the node's pid namespace. Sets up the private
# mounts, starts containerd, then the kubelet; exits (and so takes the whole
# namespace down) as soon as either of them exits.
init() {
  mount --make-rprivate /
  local d
  for d in "${PRIVATE_DIRS[@]}"; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0755,size=4g "lifeline-testenv" "$d"
  done
  local f
  while read -r f; do
    local rel="${f#"$NODE_DIR/sysctl/"}"
    mount --bind "$f" "/proc/sys/$rel"
    mount -o remount,bind,ro "/proc/sys/$rel"
  done < <(find "$NODE_DIR/sysctl" -type f)

  containerd --config "$NODE_DIR/containerd/config.toml" >> "$LOGS/containerd.log" 2>&1 &
  local cpid=$!
  for _ in $(seq 100); do [[ -S "$SOCK" ]] && break; sleep 0.1; done
  [[ -S "$SOCK" ]] || { echo "containerd did not create $SOCK" >&2; exit 1; }
  for f in "$@"; do ctr_ images import --no-unpack=false "$f" >> "$LOGS/containerd.log" 2>&1 || { echo "import $f failed" >&2; exit 1; }; done

  "$NODE_BIN" kubelet --config "$NODE_DIR/kubelet/config.yaml" \
    --kubeconfig "$NODE_DIR/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --v "${KUBELET_V:-1}" >> "$LOGS/kubelet.log" 2>&1 &
  local kpid=$!
  set +e
  wait -n "$cpid" "$kpid"
  echo "node: $( kill -0 "$cpid" 2>/dev/null && echo kubelet || echo containerd ) exited; stopping the node" >&2
  exit 1
}

# Created host mount points (empty directories) are recorded so down removes them again.
record_mount_points() {
  local d
  : > "$NODE_DIR/created-dirs"
  for d in "${PRIVATE_DIRS[@]}"; do
    if [[ ! -e "$d" ]]; then
      echo "$d" >> "$NODE_DIR/created-dirs"
      mkdir -p "$d"
    fi
  done
}

start() { # image archives to import
  command -v containerd >/dev/null && command -v runc >/dev/null && [[ -x /usr/lib/cni/bridge ]] ||
    die "containerd, runc or the CNI plugins are missing: scripts/install-deps.sh installs them"
  [[ -x "$NODE_BIN" ]] || die "$NODE_BIN is missing: tests/testenv/build-node.sh builds it"
  write_config
  cgroups_up
  record_mount_points
  : > "$LOGS/containerd.log"; : > "$LOGS/kubelet.log"; : > "$LOGS/node.log"
  setsid bash -c 'echo $$ > "$0"; exec unshare --mount --pid --fork --mount-proc --kill-child=SIGKILL "$@"' \
    "$RUN/node.pid" "$here/node.sh" init "$@" >> "$LOGS/node.log" 2>&1 < /dev/null &
  for _ in $(seq 50); do [[ -s "$RUN/node.pid" ]] && break; sleep 0.1; done
  log "started node (pid $(cat "$RUN/node.pid"), logs $LOGS/{node,containerd,kubelet}.log)"
}

down() {
  local pid
  if pid="$(live_pid node)"; then
    # SIGKILL to unshare: --kill-child sends SIGKILL to the namespace's pid 1,
    # and the kernel kills every other process of the namespace with it.
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "down: stopped node (pid $pid)"
  fi
  rm -f "$RUN/node.pid"
  # processes of the namespace may still be exiting: wait until no shim or
  # container of ours is left before removing cgroups
  local live
  for _ in $(seq 50); do
    live=$(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" || true)
    [[ -z "$live" ]] && break
    sleep 0.1
  done
  # The bridge, its addresses and the cgroup root are machine-wide: leave them to
  # the checkout whose real node owns them.
  local owner; owner="$(cat /run/lifeline-testenv.owner 2>/dev/null || true)"
  if [[ -z "$owner" || "$owner" == "$TESTENV_DIR" ]]; then
    cgroups_down
    net_down
  fi
  if [[ -f "$NODE_DIR/created-dirs" ]]; then
    local d
    while read -r d; do rmdir "$d" 2>/dev/null || true; done < "$NODE_DIR/created-dirs"
  fi
  rm -rf "$NODE_DIR/containerd" "$NODE_DIR/created-dirs" "$SOCK" "$SOCK.ttrpc"
}

import() {
  local f
  for f in "$@"; do
    ctr_ images import "$f" >/dev/null || die "ctr images import $f failed"
    log "imported $f"
  done
}

case "${1:-}" in
  net-up) net_up ;;
  write-config) write_config ;;
  start) shift; start "$@" ;;
  init) shift; init "$@" ;;
  import) shift; import "$@" ;;
  down) down ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
