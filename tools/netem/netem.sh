#!/usr/bin/env bash
# Runs an MPI command on an emulated, bandwidth-limited network: K network namespaces (one rank
# each), each with one veth end, joined by a bridge in a namespace of its own; every link is shaped
# with tc tbf in both directions (no netem: the latency is whatever the veth gives, measure it with
# bench_comm). Open MPI runs over TCP pinned to the private subnet of these namespaces, so traffic
# never leaves them. Everything is torn down on exit, on error and on Ctrl-C. Needs root.
#
# usage: tools/netem/netem.sh [--ranks K] [--profile 10gbit|1gbit|100mbit|RATE] [--check] [--] CMD...
#   --check     create and tear down the namespaces only (exit 0 when this works, else 77)
# env: NETEM_MTU (1500), NETEM_LIMIT (tbf queue bytes), NETEM_KEEP_STATS=FILE (writes `tc -s qdisc`
#      counters of every link there before teardown), MPIRUN_FLAGS (extra mpirun words).
# The command sees NETEM_PROFILE, NETEM_RANKS and NETEM_SUBNET. Ranks start through this script
# (`netem.sh __rank`), which moves each into its namespace with `ip netns exec` (OMPI_COMM_WORLD_RANK).
# Exit status: the command's; 2 bad arguments; 77 namespaces cannot be created (not root, no
# CAP_SYS_ADMIN, no veth/bridge/tbf support): ctest treats 77 as skipped; 128+N on signal N.
set -euo pipefail

# Per-rank wrapper: mpirun starts `netem.sh __rank PREFIX CMD...`, which moves into rank k's namespace.
if [[ ${1:-} == __rank ]]; then
  prefix=$2
  shift 2
  exec ip netns exec "$prefix-${OMPI_COMM_WORLD_RANK:?netem.sh __rank: not started by mpirun}" "$@"
fi

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ranks=2
profile=100mbit
check_only=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --ranks) ranks=${2:-}; shift 2 ;;
    --profile) profile=${2:-}; shift 2 ;;
    --check) check_only=1; shift ;;
    --) shift; break ;;
    -*) echo "netem.sh: unknown option '$1' (see the header of $self)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ ! $ranks =~ ^[0-9]+$ ]] || (( ranks < 2 || ranks > 64 )); then
  echo "netem.sh: --ranks must be an integer in 2..64, got '$ranks'" >&2
  exit 2
fi
case $profile in
  10gbit|1gbit|100mbit) ;;
  *) [[ $profile =~ ^[0-9]+(kbit|mbit|gbit)$ ]] || {
       echo "netem.sh: --profile must be 10gbit, 1gbit, 100mbit or a tc rate like 250mbit, got '$profile'" >&2
       exit 2; } ;;
esac
if [[ $check_only == 0 && $# -eq 0 ]]; then
  echo "netem.sh: no command given (usage: netem.sh [--ranks K] [--profile P] -- CMD...)" >&2
  exit 2
fi
if [[ $(id -u) != 0 ]]; then
  echo "netem.sh: needs root (network namespaces, veth, tc); skipped" >&2
  exit 77
fi
tc=$(command -v tc || echo /usr/sbin/tc)

# Rate in bit/s -> tbf burst of ~1 ms of traffic (at least 4 full frames), queue limit ~50 ms of
# traffic (at least 256 KiB). The bucket refills while the ranks compute, and a message that fits
# in it leaves at veth speed: with a 128 KiB bucket at 100 Mbit/s (10 ms of traffic) DeMo's 20 KB
# all-gathers and the first 128 KiB of every burst were unshaped. tbf drops a packet larger than
# its bucket, so the veths' GSO segments are capped at half the bucket (gso_max_size).
rate_bits() {
  local n=${1%%[a-z]*} u=${1##*[0-9]}
  case $u in kbit) echo $((n * 1000)) ;; mbit) echo $((n * 1000000)) ;; gbit) echo $((n * 1000000000)) ;; esac
}
bits=$(rate_bits "$profile")
mtu=${NETEM_MTU:-1500}
burst=$(( bits / 8 / 1000 )); (( burst < 4 * (mtu + 64) )) && burst=$(( 4 * (mtu + 64) ))
gso=$(( burst / 2 )); (( gso > 65536 )) && gso=65536; (( gso < mtu )) && gso=$mtu
limit=${NETEM_LIMIT:-$(( bits / 8 / 20 ))}; (( limit < 262144 )) && limit=262144

# Unique names and a private subnet per invocation, so parallel runs (ctest -j) do not collide.
id=$$
prefix="lsnet$id"
subnet="10.$(( 100 + id % 100 )).$(( (id / 100) % 250 ))"
created=()
child=
teardown() {
  local ns
  for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  created=()
}
# A signal ends mpirun first (it takes its ranks down), then the namespaces go.
on_signal() {
  if [[ -n $child ]]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  teardown
  exit $((128 + $1))
}
trap teardown EXIT
trap 'on_signal 2' INT
trap 'on_signal 15' TERM
trap 'on_signal 1' HUP

# Namespaces left by a run that was killed with SIGKILL (its pid is gone): remove them.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^lsnet[0-9]+-' || true); do
  pid=${ns#lsnet}
  pid=${pid%%-*}
  kill -0 "$pid" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

fail_setup() {
  echo "netem.sh: cannot create the emulated network ($1); skipped" >&2
  exit 77
}
quiet() { "$@" >/dev/null 2>&1; }
quiet ip netns add "$prefix-br" || fail_setup "ip netns add failed: no CAP_SYS_ADMIN or no namespace support"
created+=("$prefix-br")
quiet ip -n "$prefix-br" link add br0 type bridge || fail_setup "no bridge support"
quiet ip -n "$prefix-br" link set br0 up
quiet ip -n "$prefix-br" addr add "$subnet.254/24" dev br0
quiet ip -n "$prefix-br" link set lo up
for ((k = 0; k < ranks; k++)); do
  ns="$prefix-$k"
  quiet ip netns add "$ns" || fail_setup "ip netns add $ns failed"
  created+=("$ns")
  quiet ip -n "$ns" link add eth0 mtu "$mtu" type veth peer name "p$k" mtu "$mtu" netns "$prefix-br" \
    || fail_setup "no veth support"
  quiet ip -n "$ns" link set dev eth0 gso_max_size "$gso" || fail_setup "cannot cap GSO on $ns"
  quiet ip -n "$prefix-br" link set dev "p$k" gso_max_size "$gso" || fail_setup "cannot cap GSO on p$k"
  quiet ip -n "$ns" addr add "$subnet.$((k + 1))/24" dev eth0
  quiet ip -n "$ns" link set lo up
  # A collective after a pause (compute, a barrier) must not restart TCP from slow start.
  quiet ip netns exec "$ns" sysctl -qw net.ipv4.tcp_slow_start_after_idle=0 || true
  quiet ip -n "$ns" link set eth0 up
  quiet ip -n "$prefix-br" link set "p$k" master br0
  quiet ip -n "$prefix-br" link set "p$k" up
  # Egress of the rank (its upload) and egress of the bridge port (its download).
  quiet ip netns exec "$ns" "$tc" qdisc add dev eth0 root tbf rate "$profile" burst "$burst" limit "$limit" \
    || fail_setup "tc tbf failed on $ns"
  quiet ip netns exec "$prefix-br" "$tc" qdisc add dev "p$k" root tbf rate "$profile" burst "$burst" limit "$limit" \
    || fail_setup "tc tbf failed on the bridge port p$k"
done
if [[ $check_only == 1 ]]; then
  echo "netem.sh: $ranks namespaces at $profile created and torn down"
  exit 0
fi
echo "netem.sh: $ranks ranks, one per namespace, links $profile (tbf burst $burst B, limit $limit B, mtu $mtu, gso $gso B), subnet $subnet.0/24" >&2

# Open MPI: TCP only, pinned to the namespaces' subnet; a rank waiting on the slow link yields its
# core (the machine is shared) instead of spinning. mpirun runs in the bridge namespace (the
# switch, address .254): PMIx 4 reaches its server over TCP only, so the ranks reach mpirun through
# the bridge (a few KB at start-up, visible in the tc counters) instead of a loopback they do not share.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PMIX_MCA_ptl_tcp_remote_connections=1 PMIX_MCA_ptl_tcp_if_include="$subnet.0/24"
export NETEM_PROFILE="$profile" NETEM_RANKS="$ranks" NETEM_SUBNET="$subnet.0/24"
status=0
# In the background, so that a signal reaches the trap at once (bash runs traps only between
# foreground commands) and is forwarded to mpirun.
# shellcheck disable=SC2086
ip netns exec "$prefix-br" mpirun -n "$ranks" --oversubscribe --bind-to none \
  --mca btl self,tcp --mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include "$subnet.0/24" \
  --mca pml ob1 --mca osc ^ucx --mca mtl ^ofi,psm,psm2 --mca mpi_yield_when_idle 1 \
  ${MPIRUN_FLAGS:-} "$self" __rank "$prefix" "$@" &
child=$!
wait "$child" || status=$?
child=

stats() {
  local k
  for ((k = 0; k < ranks; k++)); do
    echo "rank $k upload (eth0 in $prefix-$k):"
    ip netns exec "$prefix-$k" "$tc" -s qdisc show dev eth0
    echo "rank $k download (p$k in $prefix-br):"
    ip netns exec "$prefix-br" "$tc" -s qdisc show dev "p$k"
  done
}
if [[ -n ${NETEM_KEEP_STATS:-} ]]; then stats >"$NETEM_KEEP_STATS"; fi
exit "$status"
