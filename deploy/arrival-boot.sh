#!/bin/bash
# arrival-boot COMMAND [ARGUMENTS...]: installs the stack's release on a stock Amazon Linux 2023
# instance and runs COMMAND (arrival-worker or arrival-serve) from it under systemd.
#
# Each instance's user data fetches this script from the release it names (ARRIVAL_RELEASE_URI,
# s3://<bucket>/releases/<version>) and runs it as its last line. The release holds the project's
# wheel and, per role, the locked requirements with their hashes (localcloud/release.py builds it).
# The local instance agent follows the same steps (localcloud/instance_release.py): the same
# objects, read with the instance's role, the same uv commands, the same layout.
#
#   /opt/arrival/deps/<role>-<lock digest>/      a virtualenv of the locked dependencies, shared by
#                                                every release with the same lock
#   /opt/arrival/releases/<version>/<role>/site  the release's own wheel, installed --no-deps
#
# The unit restarts the process whenever it ends (Restart=always) and is enabled, so a reboot, a
# stop and start, or a crash brings it back: user data itself runs only at the first boot.
#
# On a server, systemd holds the API port (arrival-server.socket) and hands it to every start of
# arrival-serve, so clients wait in its backlog while the server restarts (serving/listening.py).
# A timer runs `arrival-boot --follow` every 30 s: once the stack is settled on another
# ReleaseVersion, it installs that release with that release's own arrival-boot, which restarts the
# server from it. The old server drains, the new one answers on the same socket: no request fails.
# The local instance agent does the same (localcloud/instance_agent.py, follow_release).
set -euo pipefail

if [ "${1:-}" = --follow ]; then
  set -a
  # shellcheck source=/dev/null  # written below, at the server's last install
  . /etc/arrival/server.env
  set +a
  read -r status version < <(aws cloudformation describe-stacks --stack-name "$ARRIVAL_STACK_NAME" \
    --output text --query "Stacks[0].[StackStatus, Parameters[?ParameterKey=='ReleaseVersion'].ParameterValue | [0]]")
  case "$status" in
    DELETE_*) exit 0 ;;  # the stack is going: so is this instance
    *_COMPLETE) ;;       # settled: an update finished, or rolled back to the release it names again
    *) exit 0 ;;         # in progress, or failed: look again at the next run
  esac
  if [ "$version" = "$ARRIVAL_RELEASE_VERSION" ]; then exit 0; fi
  export ARRIVAL_RELEASE_URI="s3://$ARRIVAL_RELEASE_BUCKET/releases/$version"
  # Not the first boot's: no CreationPolicy waits for this one.
  unset ARRIVAL_RELEASE_VERSION ARRIVAL_CFN_SIGNAL_RESOURCE
  aws s3 cp --quiet "$ARRIVAL_RELEASE_URI/arrival-boot" /usr/local/bin/arrival-boot.next
  chmod 755 /usr/local/bin/arrival-boot.next
  mv -f /usr/local/bin/arrival-boot.next /usr/local/bin/arrival-boot
  exec /usr/local/bin/arrival-boot arrival-serve
fi

command_name=${1:?usage: arrival-boot arrival-worker|arrival-serve [ARGUMENTS...] | arrival-boot --follow}
case "$command_name" in
  arrival-worker) role=trainer ;;
  arrival-serve) role=server ;;
  *) echo "arrival-boot: no role runs $command_name" >&2; exit 2 ;;
esac
release_uri=${ARRIVAL_RELEASE_URI:?the user data exports ARRIVAL_RELEASE_URI}
version=${release_uri##*/}
root=/opt/arrival
downloads=$root/downloads/$version
# Amazon Linux 2023's python3.11 package: the interpreter the release's lock was resolved for
# (localcloud/release.py INSTANCE_PYTHON).
python=python3.11
uv_version=0.13.9

# libgomp: LightGBM's library links the system's OpenMP runtime (scikit-learn and XGBoost bundle theirs).
dnf install -y -q "$python" "$python-pip" aws-cfn-bootstrap libgomp
if [ ! -x "$root/uv/bin/uv" ]; then
  "$python" -m venv "$root/uv"
  "$root/uv/bin/pip" install -q "uv==$uv_version"
fi
uv=$root/uv/bin/uv

mkdir -p "$downloads"
aws s3 cp --quiet "$release_uri/release.json" "$downloads/release.json"
wheel=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["wheel"])' "$downloads/release.json")
aws s3 cp --quiet "$release_uri/$wheel" "$downloads/$wheel"
aws s3 cp --quiet "$release_uri/requirements-$role.txt" "$downloads/requirements-$role.txt"

# No bytecode at install: the first start compiles and writes what it imports (a few hundred of
# the trainer's 18,000 files), and every later start reads it.
lock_digest=$(sha256sum "$downloads/requirements-$role.txt" | cut -c1-16)
deps=$root/deps/$role-$lock_digest
if [ ! -e "$deps/.complete" ]; then
  rm -rf "$deps"
  "$uv" venv -q --python "$python" "$deps"
  "$uv" pip install -q --python "$deps/bin/python" --require-hashes \
    -r "$downloads/requirements-$role.txt"
  touch "$deps/.complete"
fi
site=$root/releases/$version/$role/site
if [ ! -e "$site/.complete" ]; then
  rm -rf "$site"
  "$uv" pip install -q --python "$deps/bin/python" --no-deps --target "$site" \
    "$downloads/$wheel"
  touch "$site/.complete"
fi

# What the user data exported for the process: arrival's settings, the region and the tracking
# server; the unit reads them at every start.
mkdir -p /etc/arrival
env | grep -E '^(ARRIVAL_[A-Z0-9_]+|AWS_DEFAULT_REGION|MLFLOW_TRACKING_URI)=' > "/etc/arrival/$role.env"
echo "ARRIVAL_RELEASE_VERSION=$version" >> "/etc/arrival/$role.env"
shift
socket_dependency=""
if [ "$role" = server ]; then
  cat > /etc/systemd/system/arrival-server.socket <<UNIT
[Unit]
Description=arrival server's API port, held across the server's restarts

[Socket]
ListenStream=${ARRIVAL_SERVING_PORT:-8080}
Backlog=4096

[Install]
WantedBy=sockets.target
UNIT
  cat > /etc/systemd/system/arrival-follow.service <<UNIT
[Unit]
Description=arrival: move the server to its stack's release once it changes

[Service]
Type=oneshot
ExecStart=/usr/local/bin/arrival-boot --follow
UNIT
  cat > /etc/systemd/system/arrival-follow.timer <<UNIT
[Unit]
Description=arrival: look for the stack's release every 30 s

[Timer]
OnBootSec=1min
OnUnitActiveSec=30s

[Install]
WantedBy=timers.target
UNIT
  socket_dependency="Requires=arrival-server.socket"
fi
cat > "/etc/systemd/system/arrival-$role.service" <<UNIT
[Unit]
Description=arrival $role (release $version)
After=network-online.target
Wants=network-online.target
$socket_dependency

[Service]
EnvironmentFile=/etc/arrival/$role.env
Environment=PYTHONPATH=$site
Environment=PATH=$site/bin:$deps/bin:/usr/local/bin:/usr/bin
WorkingDirectory=$root
ExecStart=$site/bin/$command_name $*
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
if [ "$role" = server ]; then
  systemctl enable --now arrival-server.socket arrival-follow.timer
fi
# A restart, not a start: after --follow, the running server drains and the new release's starts.
systemctl enable "arrival-$role.service"
systemctl restart "arrival-$role.service"

# A server that never answers fails its stack's deploy (the instance's CreationPolicy): report
# whether /health answered within the first ten minutes.
if [ "$role" = server ] && [ -n "${ARRIVAL_CFN_SIGNAL_RESOURCE:-}" ]; then
  status=1
  for _ in $(seq 600); do
    if curl -fsS "http://127.0.0.1:${ARRIVAL_SERVING_PORT:-8080}/health" > /dev/null; then status=0; break; fi
    sleep 1
  done
  /opt/aws/bin/cfn-signal -e "$status" --stack "$ARRIVAL_STACK_NAME" --resource "$ARRIVAL_CFN_SIGNAL_RESOURCE" \
    --region "$AWS_DEFAULT_REGION"
fi
