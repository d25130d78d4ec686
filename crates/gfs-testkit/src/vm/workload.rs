//! Guest-side workloads the scenarios and the demo share: a writer whose fsync'ed progress the
//! host can trust, a reader of another node's files, a poller of `lock_module/block`, and
//! the checks that read the data back. Each background loop logs to the node's log
//! directory with the guest's wall-clock stamp, so its record survives the VM.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{VmCluster, MOUNTPOINT};

/// One background loop in a guest (its process group).
pub struct Job {
    pub node: u32,
    pub pid: u32,
}

impl VmCluster {
    /// Stops a background loop (its whole process group).
    pub fn stop_job(&self, job: &Job) {
        let _ = self.sh(
            job.node,
            &format!("kill -TERM -- -{} 2>/dev/null; true", job.pid),
        );
    }

    /// Logs every change of node `id`'s `lock_module/block` to `blockpoll.log`
    /// (`<stamp> block=<0|1|gone>`), reading it every 50 ms without forking.
    pub fn start_blockpoll(&self, id: u32) -> Result<Job> {
        let file = format!("{}/lock_module/block", self.sysfs());
        let pid = self.spawn(
            id,
            &format!(
                "prev=; while :; do b=gone; read -r b < {file} 2>/dev/null; \
                 if [ \"$b\" != \"$prev\" ]; then echo \"$(date +%s.%N) block=$b\"; prev=$b; fi; sleep 0.05; done"
            ),
            "blockpoll.log",
        )?;
        Ok(Job { node: id, pid })
    }

    /// `(host ms, value)` of every `block` change node `id` logged since `since_ms`.
    pub fn block_changes(&self, id: u32, since_ms: u64) -> Vec<(u64, String)> {
        self.log(id, "blockpoll.log")
            .lines()
            .filter_map(|l| {
                let (secs, v) = l.split_once(' ')?;
                Some((
                    self.host_ms(id, secs.parse().ok()?),
                    v.trim_start_matches("block=").to_owned(),
                ))
            })
            .filter(|(t, _)| *t >= since_ms)
            .collect()
    }

    /// Starts node `id`'s writer in `dir` (under the mount point): forever, append `line<k>`
    /// to `live.log`, rewrite `t<k mod 40>` with 4 KiB of `t<k>` lines, write `k` to
    /// `counter` (a journaled-data file, so its newest value may live only in the journal),
    /// each fsync'ed; only then log `durable <k>` to `writer-<tag>.log`. Whatever the log says
    /// is durable must survive a crash.
    pub fn start_writer(&self, id: u32, dir: &str, tag: &str) -> Result<Job> {
        self.start_writer_sized(id, dir, tag, 4096, false)
    }

    /// [`Self::start_writer`] with `t` files of `size` bytes; `jdata` makes every file of the
    /// directory journaled data, so that each fsync puts all its blocks in the journal (many
    /// dirty blocks to replay).
    pub fn start_writer_sized(
        &self,
        id: u32,
        dir: &str,
        tag: &str,
        size: u32,
        jdata: bool,
    ) -> Result<Job> {
        let d = format!("{MOUNTPOINT}/{dir}");
        let j = if jdata {
            format!("chattr +j {d} && ")
        } else {
            String::new()
        };
        self.sh(
            id,
            &format!(
                "mkdir -p {d} && {j}cd {d} && : > counter && chattr +j counter && sync . counter"
            ),
        )?;
        let pid = self.spawn(
            id,
            &format!(
                "cd {d} || exit 1; k=0; while :; do k=$((k+1)); echo line$k >> live.log; sync live.log; \
                 t=t$((k % 40)); yes t$k | head -c {size} > $t; sync $t; echo $k > counter; sync counter; \
                 echo \"$(date +%s.%N) durable $k\"; done"
            ),
            &format!("writer-{tag}.log"),
        )?;
        Ok(Job { node: id, pid })
    }

    /// The last `k` node `id`'s writer logged as durable.
    pub fn writer_durable(&self, id: u32, tag: &str) -> u64 {
        self.log(id, &format!("writer-{tag}.log"))
            .lines()
            .filter_map(|l| l.split("durable ").nth(1)?.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Checks on node `id` that everything the writer in `dir` had made durable (up to
    /// `durable`) reads back intact: `live.log` is exactly `line1..lineM` with M ≥ durable,
    /// `counter` ≥ durable, and each `t` file whole (4 KiB of one `t<k>` line) and at least
    /// as new as its last durable write.
    pub fn check_writer_data(&self, id: u32, dir: &str, durable: u64) -> Result<String> {
        self.check_writer_data_sized(id, dir, durable, 4096)
    }

    /// [`Self::check_writer_data`] for a writer with `t` files of `size` bytes.
    pub fn check_writer_data_sized(
        &self,
        id: u32,
        dir: &str,
        durable: u64,
        size: u32,
    ) -> Result<String> {
        let d = format!("{MOUNTPOINT}/{dir}");
        let out = self.sh_timeout(
            id,
            &format!(
                "cd {d} && awk '$0 != \"line\" NR {{ bad++ }} END {{ print NR, bad + 0 }}' live.log && cat counter && \
                 for f in t*; do h=$(head -n1 $f); if cmp -s $f <(yes $h | head -c {size}); then w=whole; else w=torn; fi; \
                 echo \"$f $(stat -c %s $f) $h $w\"; done"
            ),
            Duration::from_secs(120),
        )?;
        let mut lines = out.lines();
        let mut head = lines.next().unwrap_or("").split_whitespace();
        let m: u64 = head.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let bad: u64 = head.next().and_then(|v| v.parse().ok()).unwrap_or(1);
        let counter: u64 = lines
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if bad != 0 || m < durable {
            bail!("node {id}: {d}/live.log has {m} lines ({bad} out of order or garbled); {durable} were fsync'ed");
        }
        if counter < durable {
            bail!("node {id}: {d}/counter reads {counter}; {durable} was fsync'ed");
        }
        for l in lines {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 {
                bail!("node {id}: odd t-file line {l:?}");
            }
            let idx: u64 = f[0].trim_start_matches('t').parse().unwrap_or(0);
            let k: u64 = f[2].trim_start_matches('t').parse().unwrap_or(0);
            // The newest durable write of this file.
            let want = (1..=durable).rev().find(|k| k % 40 == idx).unwrap_or(0);
            if f[1] != size.to_string() || f[3] != "whole" || k < want || k % 40 != idx {
                bail!("node {id}: {d}/{} is torn or stale: size {}, first line {}, {} (newest durable write: t{want})", f[0], f[1], f[2], f[3]);
            }
        }
        Ok(format!(
            "live.log {m} lines, counter {counter}, fsync'ed before the kill: {durable}"
        ))
    }

    /// `n` files of random data in `dir` on node `id`, synced; returns their checksum.
    pub fn write_synced_files(&self, id: u32, dir: &str, n: u32) -> Result<String> {
        let d = format!("{MOUNTPOINT}/{dir}");
        let out = self.sh_timeout(
            id,
            &format!(
                "mkdir -p {d} && cd {d} && for k in $(seq 1 {n}); do head -c 16384 /dev/urandom > f$k; done && \
                 sync && md5sum f* | md5sum | cut -d' ' -f1"
            ),
            Duration::from_secs(120),
        )?;
        Ok(out.trim().to_owned())
    }

    /// The checksum of the files `write_synced_files` made in `dir`, read on node `id`.
    pub fn read_synced_files(&self, id: u32, dir: &str) -> Result<String> {
        let out = self
            .sh_timeout(
                id,
                &format!("cd {MOUNTPOINT}/{dir} && md5sum f* | md5sum | cut -d' ' -f1"),
                Duration::from_secs(120),
            )
            .with_context(|| format!("reading {dir} on node {id}"))?;
        Ok(out.trim().to_owned())
    }

    /// Reads the writer's `live.log` and `counter` in `dir` on node `id` again and again,
    /// logging `<start> <end> lines=<wc output> rc=<rc> counter=<value> rc=<rc>` to
    /// `reader-<tag>.log`. A read that blocks shows as a gap between start and end.
    pub fn start_reader(&self, id: u32, dir: &str, tag: &str) -> Result<Job> {
        let d = format!("{MOUNTPOINT}/{dir}");
        let pid = self.spawn(
            id,
            &format!(
                "while :; do s=$(date +%s.%N); n=$(wc -l {d}/live.log 2>&1); r1=$?; c=$(cat {d}/counter 2>&1); r2=$?; \
                 echo \"$s $(date +%s.%N) lines=${{n%% *}} rc=$r1 counter=$c rc=$r2\"; sleep 0.2; done"
            ),
            &format!("reader-{tag}.log"),
        )?;
        Ok(Job { node: id, pid })
    }
}
