//! The VMs' initramfs: busybox, the few modules needed to mount the host's `/` over virtio-9p,
//! and an `/init` that mounts it read-only and switches to it, handing over to
//! `gfs_vm_agent init` (path on the kernel command line, `gfsvm.agent=`). Everything else
//! (modules, tools, the daemons) comes from the host's root. Written as an uncompressed
//! newc cpio, which the kernel unpacks as is.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// Modules the initramfs loads to reach the root (their dependencies come along).
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

const INIT: &str = r#"#!/bin/busybox sh
# gfs-testkit VM init: mount the host's / (read-only, 9p) and hand over to gfs_vm_agent.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in $($B cat /modules/order); do
    $B insmod /modules/$m || echo "init: insmod $m failed"
done
agent=
for w in $($B cat /proc/cmdline); do
    case $w in gfsvm.agent=*) agent=${w#gfsvm.agent=} ;; esac
done
if ! $B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot; then
    echo "init: cannot mount the host's root"; $B poweroff -f
fi
if [ ! -x "/newroot$agent" ]; then
    echo "init: no agent at $agent"; $B poweroff -f
fi
$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
exec $B switch_root /newroot "$agent" init
"#;

/// The newest kernel under /lib/modules that has gfs2 and dlm, and its image in /boot.
pub fn find_kernel() -> Result<(String, PathBuf)> {
    let mut versions: Vec<String> = fs::read_dir("/lib/modules")
        .context("no /lib/modules: install linux-image-amd64")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|v| {
            let m = Path::new("/lib/modules").join(v).join("kernel/fs");
            m.join("gfs2/gfs2.ko").exists() && m.join("dlm/dlm.ko").exists()
        })
        .filter(|v| Path::new("/boot").join(format!("vmlinuz-{v}")).exists())
        .collect();
    versions.sort_by_key(|v| version_key(v));
    let v = versions
        .pop()
        .ok_or_else(|| anyhow!("no kernel with gfs2 and dlm modules and a /boot/vmlinuz image: install linux-image-amd64"))?;
    let image = Path::new("/boot").join(format!("vmlinuz-{v}"));
    Ok((v, image))
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The modules' files in load order (dependencies first), from modules.dep.
fn module_closure(kver: &str) -> Result<Vec<PathBuf>> {
    let base = Path::new("/lib/modules").join(kver);
    let dep = fs::read_to_string(base.join("modules.dep")).context("reading modules.dep")?;
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let name = module_name(module);
        deps.insert(
            name,
            (
                module.to_owned(),
                rest.split_whitespace().map(module_name).collect(),
            ),
        );
    }
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if order.iter().any(|o| o == name) {
            return Ok(());
        }
        let (_, needs) = deps
            .get(name)
            .ok_or_else(|| anyhow!("module {name} is not in modules.dep"))?;
        for need in needs {
            visit(need, deps, order)?;
        }
        order.push(name.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    for m in ROOT_MODULES {
        visit(m, &deps, &mut order)?;
    }
    Ok(order.iter().map(|n| base.join(&deps[n].0)).collect())
}

/// `kernel/fs/9p/9p.ko` → `9p` (modprobe's names use `_` for `-`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// A newc cpio archive being built.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        self.pad_to(4);
    }

    fn pad_to(&mut self, align: usize) {
        let len = self.data.len();
        self.data.resize(len.div_ceil(align) * align, 0);
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), body);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.pad_to(512);
        self.data
    }
}

/// Builds the initramfs for `kver`; returns the archive's bytes.
pub fn build(kver: &str) -> Result<Vec<u8>> {
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    let mut order = String::new();
    for path in module_closure(kver)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".xz") || name.ends_with(".zst") || name.ends_with(".gz") {
            return Err(anyhow!(
                "{}: compressed modules are not supported by busybox insmod",
                path.display()
            ));
        }
        let body = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        cpio.file(&format!("modules/{name}"), 0o644, &body);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    Ok(cpio.finish())
}

/// The initramfs for `kver` under `cache_dir`, rewritten only when its content changed.
pub fn ensure(cache_dir: &Path, kver: &str) -> Result<PathBuf> {
    fs::create_dir_all(cache_dir)?;
    let path = cache_dir.join(format!("initramfs-{kver}.cpio"));
    let image = build(kver)?;
    if fs::read(&path).ok().as_deref() != Some(&image[..]) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, &image)?;
        fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_names() {
        assert_eq!(super::module_name("kernel/fs/9p/9p.ko"), "9p");
        assert_eq!(
            super::module_name("kernel/drivers/virtio/virtio-ring.ko.xz"),
            "virtio_ring"
        );
    }

    #[test]
    fn cpio_is_aligned_and_terminated() {
        let mut c = super::Cpio::default();
        c.file("a", 0o644, b"xyz");
        let data = c.finish();
        assert_eq!(&data[..6], b"070701");
        assert_eq!(data.len().div_ceil(512) * 512, data.len());
        assert!(data.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
