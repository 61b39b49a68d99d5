#!/bin/sh
# Our tunnel for ../shared/peerbench (`--kinds custom`), the same script on both sides:
#   peerbench run --kinds wireguard-go,openvpn,tinc,custom --custom-name tunnel \
#     --custom-server bench/peerbench-tunnel.sh --custom-client bench/peerbench-tunnel.sh
# Uses only the PB_* variables the rig exports; keys are exchanged through $PB_WORKDIR.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
tunnel="$here/.venv/bin/tunnel"
dev="pbt$PB_SIDE"
peer=$([ "$PB_SIDE" = a ] && echo b || echo a)
umask 077
"$tunnel" genkey > "$PB_WORKDIR/t-$PB_SIDE.key"
"$tunnel" pubkey < "$PB_WORKDIR/t-$PB_SIDE.key" > "$PB_WORKDIR/t-$PB_SIDE.pub.tmp"
mv "$PB_WORKDIR/t-$PB_SIDE.pub.tmp" "$PB_WORKDIR/t-$PB_SIDE.pub"
i=0; while [ ! -s "$PB_WORKDIR/t-$peer.pub" ]; do i=$((i+1)); [ $i -gt 300 ] && exit 1; sleep 0.1; done
conf="$PB_WORKDIR/$dev.conf"
{
  echo "[Interface]"
  echo "PrivateKey = $(cat "$PB_WORKDIR/t-$PB_SIDE.key")"
  echo "ListenPort = 51822"
  echo "Address = $PB_INNER_CIDR"
  echo "MTU = 1420"
  echo "[Peer]"
  echo "PublicKey = $(cat "$PB_WORKDIR/t-$peer.pub")"
  echo "AllowedIPs = $PB_PEER_INNER/32"
  [ "$PB_SIDE" = a ] && echo "Endpoint = $PB_PEER_UNDERLAY:51822"
} > "$conf"
TUNNEL_STATE_DIR="$PB_WORKDIR/state-$PB_SIDE" nohup "$tunnel" up "$conf" > "$PB_WORKDIR/$dev.log" 2>&1 &
