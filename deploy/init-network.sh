#!/bin/sh
# Create the data dirs and the shared network file of a multi-container flnode network.
#
# Run once, as root, in a one-shot container of the flnode image (deploy/compose.yaml does), with
# every node's data volume mounted at $ROOT/<name> and a shared volume at $NETWORK_DIR:
#
#   init-network.sh NAME:ROLES:IP [NAME:ROLES:IP ...]     e.g. miner-1:miner:172.28.10.11
#
# For each node it runs `flnode init`, then writes the node's config.toml: its roles, the network
# id, listen on 0.0.0.0:$P2P_PORT, bootstrap to every miner by its fixed IP and peer ID, the ledger
# network file, and for devices their shard of the training data. Then `flnode network new` writes
# $NETWORK_DIR/network.toml: every node funded, every miner staked (the miners are the BFT
# committee). Finally everything is handed to the image's non-root user (uid $NODE_UID).
#
# A network that already has its network file is left alone (the genesis must not change under
# running nodes); FORCE=1 rewrites the configs and the network file (keys are kept).
set -eu

ROOT=${ROOT:-/init}
NETWORK_DIR=${NETWORK_DIR:-/network}
NETWORK_ID=${NETWORK_ID:-flnode-docker}
CHAIN_ID=${CHAIN_ID:-1337}
P2P_PORT=${P2P_PORT:-4001}
MINER_STAKE=${MINER_STAKE:-10ether}
NODE_UID=${NODE_UID:-10001}
FORCE=${FORCE:-0}
NETWORK_FILE="$NETWORK_DIR/network.toml"

if [ "$#" -eq 0 ]; then
    echo "usage: $0 NAME:ROLES:IP..." >&2
    exit 2
fi
if [ -e "$NETWORK_FILE" ] && [ "$FORCE" != 1 ]; then
    echo "init-network: $NETWORK_FILE exists; nothing to do (FORCE=1 rewrites it)"
    exit 0
fi

peer_id() {
    flnode keys show --datadir "$1" --json \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["peer_id"])'
}

# 1. a data dir (key, token) for every node; the miners' bootstrap addresses
bootstrap=""
devices=0
for spec in "$@"; do
    IFS=: read -r name roles ip <<SPEC
$spec
SPEC
    if [ -z "$name" ] || [ -z "$roles" ] || [ -z "$ip" ]; then
        echo "init-network: bad node spec '$spec' (want NAME:ROLES:IP)" >&2
        exit 2
    fi
    mkdir -p "$ROOT/$name"
    if [ ! -e "$ROOT/$name/node.key" ]; then
        flnode init --datadir "$ROOT/$name" >/dev/null
    fi
    case ",$roles," in
        *,miner,*) bootstrap="$bootstrap $name=/ip4/$ip/tcp/$P2P_PORT/p2p/$(peer_id "$ROOT/$name")" ;;
    esac
    case ",$roles," in
        *,device,*) devices=$((devices + 1)) ;;
    esac
done

# 2. every node's config.toml
device_index=0
for spec in "$@"; do
    IFS=: read -r name roles ip <<SPEC
$spec
SPEC
    seeds=""
    for entry in $bootstrap; do
        [ "${entry%%=*}" = "$name" ] && continue
        seeds="$seeds\"${entry#*=}\", "
    done
    role_list=$(printf '%s' "$roles" | sed 's/[^,][^,]*/"&"/g; s/,/, /g')
    {
        echo "# Written by deploy/init-network.sh for node $name ($ip)."
        echo "[node]"
        echo "roles = [$role_list]"
        echo "network_id = \"$NETWORK_ID\""
        echo
        echo "[log]"
        echo "format = \"json\""
        echo
        echo "[p2p]"
        echo "listen = [\"/ip4/0.0.0.0/tcp/$P2P_PORT\"]"
        echo "bootstrap = [${seeds%, }]"
        echo "peer_exchange_interval_s = 2.0"
        echo "reconnect_max_backoff_s = 5.0"
        echo
        echo "[api]"
        echo "call_timeout_s = 600.0"
        echo
        echo "[chain]"
        echo "network_file = \"$NETWORK_FILE\""
        case ",$roles," in
            *,device,*)
                echo
                echo "[federation]"
                echo "shard_index = $device_index"
                echo "shard_count = $devices"
                device_index=$((device_index + 1))
                ;;
        esac
    } >"$ROOT/$name/config.toml"
done

# 3. the network file: miners staked (and funded), everyone else funded
set -- "$@"
args=""
for spec in "$@"; do
    name=${spec%%:*}
    rest=${spec#*:}
    roles=${rest%%:*}
    case ",$roles," in
        *,miner,*) args="$args --miner $ROOT/$name=$MINER_STAKE" ;;
        *) args="$args --account $ROOT/$name" ;;
    esac
done
mkdir -p "$NETWORK_DIR"
# shellcheck disable=SC2086  # $args is a list of flags without spaces inside
flnode network new "$NETWORK_FILE" --network-id "$NETWORK_ID" --chain-id "$CHAIN_ID" --force $args

for spec in "$@"; do
    chown -R "$NODE_UID:$NODE_UID" "$ROOT/${spec%%:*}"
done
chown -R "$NODE_UID:$NODE_UID" "$NETWORK_DIR"
echo "init-network: $# nodes in $ROOT, network file $NETWORK_FILE"
