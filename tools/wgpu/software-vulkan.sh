#!/usr/bin/env bash
# Makes sure a Vulkan driver is there for the wgpu backend; on a machine without a GPU that is Mesa's
# software rasteriser (llvmpipe / lavapipe). Installs it with apt when it is missing and we are root (CI is).
# Source it: it also exports XDG_RUNTIME_DIR, which wgpu's loader warns about when unset.
set -euo pipefail
if ! ldconfig -p | grep -q 'libvulkan\.so\.1' || ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "no Vulkan driver: install mesa-vulkan-drivers and libvulkan1 (as root)" >&2
        exit 1
    fi
    echo "installing Mesa's software Vulkan (mesa-vulkan-drivers, libvulkan1)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
