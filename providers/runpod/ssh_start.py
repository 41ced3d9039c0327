"""SSH on a custom `--image`: the start command that installs sshd and the run's key, sent as dockerArgs.

RunPod's official images (`runpod/...`) start sshd from the `PUBLIC_KEY` env var in their own start
script; any other image opens no SSH at all, and RunPod's docs say to give it a start command that
installs openssh-server, appends `$PUBLIC_KEY` to `~/.ssh/authorized_keys` and starts the daemon
(plus `$SSH_PUBLIC_KEY`, the per-pod key, where RunPod put the account's keys in PUBLIC_KEY)
(https://docs.runpod.io/pods/configuration/use-ssh, "Full SSH via public IP with key
authentication"; runpod/docs pods/configuration/use-ssh.mdx). That command is what is built here,
plus rsync (the controller syncs with it) and the container's environment for ssh sessions, as
SkyPilot's RunPod start command does (sky/provision/runpod/utils.py launch()).

dockerArgs replaces the image's CMD (it is the "container start command"), so it is sent only for
images without RunPod's start script: on an official image it would replace /start.sh itself.

The SDK pastes dockerArgs into the GraphQL text unescaped (runpod-python api/mutations/pods.py:
`dockerArgs: "{docker_args}"`), so the script travels base64-encoded inside `sh -c '...'`, the way
SkyPilot does it: the value holds only letters, digits, spaces, `'`, `|`, `;`, `>`, `/`, `+`, `=`, `-`
and `.`, nothing that can end the GraphQL string.
"""

from __future__ import annotations

import base64
import re

from providers.base import ProviderError

# `auto`: install sshd for images that are not RunPod's own; `image`: trust the image to start sshd
# from PUBLIC_KEY; `install`: always send the start command.
SSH_SETUPS = ("auto", "image", "install")
OFFICIAL_IMAGE_PREFIX = "runpod/"
_DOCKER_ARGS_RE = re.compile(r"^[A-Za-z0-9 '|;>/+=.-]*$")

# POSIX sh (the image may have no bash). Runs as the container's PID 1 and stays it, so RunPod's
# RUNPOD_POD_ID / RUNPOD_API_KEY remain in /proc/1/environ for the self-destruct.
START_SCRIPT = r"""# gpurun: open SSH on an image without RunPod's start script (docs.runpod.io/pods/configuration/use-ssh)
need() { ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; }
if need sshd || need rsync; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openssh-server rsync curl ca-certificates
  elif command -v apk >/dev/null 2>&1; then apk add --no-cache openssh-server rsync curl
  elif command -v dnf >/dev/null 2>&1; then dnf install -y openssh-server rsync curl
  elif command -v microdnf >/dev/null 2>&1; then microdnf install -y openssh-server rsync curl
  elif command -v yum >/dev/null 2>&1; then yum install -y openssh-server rsync curl
  else echo "gpurun: no package manager to install openssh-server and rsync" >&2
  fi
fi
mkdir -p /run/sshd /root/.ssh && chmod 700 /root/.ssh
if [ -n "${PUBLIC_KEY:-}" ]; then printf '%s\n' "$PUBLIC_KEY" >> /root/.ssh/authorized_keys; fi
# The per-pod key (docs.runpod.io/pods/configuration/use-ssh): RunPod may have put the account's keys in
# PUBLIC_KEY; the run's own key is in SSH_PUBLIC_KEY as well.
if [ -n "${SSH_PUBLIC_KEY:-}" ] && [ "$SSH_PUBLIC_KEY" != "${PUBLIC_KEY:-}" ]; then
  printf '%s\n' "$SSH_PUBLIC_KEY" >> /root/.ssh/authorized_keys
fi
chmod 600 /root/.ssh/authorized_keys 2>/dev/null
sed -i 's@session\s*required\s*pam_loginuid.so@session optional pam_loginuid.so@g' /etc/pam.d/sshd 2>/dev/null
ssh-keygen -A >/dev/null 2>&1
# ssh sessions do not inherit the container's environment (CUDA paths...): keep it for login shells,
# without the pod's own API key.
mkdir -p /etc/profile.d
export -p | grep -v -e ' RUNPOD_API_KEY=' -e ' PUBLIC_KEY=' -e ' SSH_PUBLIC_KEY=' > /etc/profile.d/gpurun_container_env.sh
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
"$SSHD" -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""


def check_ssh_setup(value: str) -> str:
    setup = str(value).lower()
    if setup not in SSH_SETUPS:
        raise ProviderError(f"RunPod ssh_setup {value!r} is not one of {', '.join(SSH_SETUPS)}")
    return setup


def image_has_start_script(image: str) -> bool:
    """RunPod's official images (runpod/pytorch, runpod/base, ...) start sshd from PUBLIC_KEY."""
    return image.startswith(OFFICIAL_IMAGE_PREFIX)


def docker_args_for(image: str, ssh_setup: str = "auto") -> str:
    """dockerArgs for a pod of `image`: "" (keep the image's own start) or our SSH start command."""
    setup = check_ssh_setup(ssh_setup)
    if setup == "image" or (setup == "auto" and image_has_start_script(image)):
        return ""
    encoded = base64.b64encode(START_SCRIPT.encode()).decode("ascii")
    args = f"sh -c 'echo {encoded} | base64 -d > /tmp/gpurun-ssh.sh; exec sh /tmp/gpurun-ssh.sh'"
    if not _DOCKER_ARGS_RE.match(args):  # the SDK pastes it into GraphQL unescaped
        raise ProviderError("RunPod dockerArgs would contain a character unsafe in GraphQL")
    return args
