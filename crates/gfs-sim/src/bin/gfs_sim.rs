//! gfs_sim: run seeds of the deterministic cluster simulation and check the safety rules.

use std::process::ExitCode;

use gfs_sim::{run, SimConfig};

const USAGE: &str = "usage: gfs_sim [--seeds N] [--first-seed S] [--seed S] [--nodes K] [--filesystems F] [--keep-going] [--trace] [--hashes] [--json] [--demo]
  --seeds N         run N seeds (default 100), from --first-seed (default 1)
  --seed S          run only seed S (replay a failure)
  --nodes K         nodes per run, or a range A-B drawn from the seed (default 3-7)
  --filesystems F   filesystems per run, or a range A-B drawn from the seed (default 1-4)
  --keep-going      run every seed: one line per broken seed, the count at the end
  --trace           print the full event trace of each run
  --hashes          print each seed's trace hash (compare runs before and after a refactoring)
  --json            print the summary as JSON
  --demo            print the recovery timeline of a 3-node cluster losing one node";

struct Args {
    seeds: u64,
    first_seed: u64,
    seed: Option<u64>,
    nodes: (u32, u32),
    filesystems: (u32, u32),
    keep_going: bool,
    trace: bool,
    hashes: bool,
    json: bool,
    demo: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 100,
        first_seed: 1,
        seed: None,
        nodes: (3, 7),
        filesystems: (1, 4),
        keep_going: false,
        trace: false,
        hashes: false,
        json: false,
        demo: false,
    };
    let range = |name: &str, text: Option<String>| -> Result<(u32, u32), String> {
        let text = text.ok_or(format!("{name} needs a value"))?;
        let num = |t: &str| {
            t.parse::<u32>()
                .map_err(|_| format!("{name}: {t} is not a number"))
        };
        let (lo, hi) = match text.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(&text)?, num(&text)?),
        };
        if lo > hi {
            return Err(format!("{name}: {lo} is above {hi}"));
        }
        Ok((lo, hi))
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|_| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--seeds" => a.seeds = value("--seeds")?,
            "--first-seed" => a.first_seed = value("--first-seed")?,
            "--seed" => a.seed = Some(value("--seed")?),
            "--nodes" => a.nodes = range("--nodes", it.next())?,
            "--filesystems" => a.filesystems = range("--filesystems", it.next())?,
            "--keep-going" => a.keep_going = true,
            "--trace" => a.trace = true,
            "--hashes" => a.hashes = true,
            "--json" => a.json = true,
            "--demo" => a.demo = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !(1..=32).contains(&a.nodes.0)
        || a.nodes.1 > 32
        || !(1..=64).contains(&a.filesystems.0)
        || a.filesystems.1 > 64
    {
        return Err("--nodes must be 1..=32 and --filesystems 1..=64".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gfs_sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.demo {
        print!("{}", gfs_sim::demo::run_demo());
        return ExitCode::SUCCESS;
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let (mut steps, mut failures, mut replayed, mut stalled) = (0u64, 0u64, 0u64, 0u64);
    let mut broken = 0u64;
    for seed in &seeds {
        let cfg = gfs_sim::sweep_config_in(*seed, args.nodes, args.filesystems);
        let mut cfg: SimConfig = cfg;
        cfg.trace = args.trace;
        let out = run(cfg.clone());
        if args.trace {
            for line in &out.trace {
                println!("{line}");
            }
        }
        if args.hashes {
            println!("seed {seed} trace hash {:016x}", out.trace_hash);
        }
        steps += out.steps;
        failures += out.failures_injected;
        replayed += out.journals_replayed;
        stalled += out.stalled_without_rw;
        if let Some(v) = out.violation {
            if args.keep_going {
                broken += 1;
                println!(
                    "seed {seed} ({} nodes, {} filesystems) broke {} at {}: {}",
                    cfg.nodes, cfg.filesystems, v.rule, v.time, v.detail
                );
                continue;
            }
            if !args.trace {
                let tail = out.trace.len().saturating_sub(60);
                for line in &out.trace[tail..] {
                    eprintln!("{line}");
                }
            }
            eprintln!(
                "gfs_sim: seed {seed} ({} nodes, {} filesystems) broke {} at {} (step {}): {}",
                cfg.nodes, cfg.filesystems, v.rule, v.time, v.step, v.detail
            );
            eprintln!(
                "replay with: gfs_sim --seed {seed} --trace --nodes {}-{} --filesystems {}-{}",
                args.nodes.0, args.nodes.1, args.filesystems.0, args.filesystems.1
            );
            return ExitCode::from(1);
        }
    }
    if args.json {
        println!(
            "{{\"seeds\":{},\"steps\":{steps},\"failures_injected\":{failures},\"journals_replayed\":{replayed},\"stalled_without_rw\":{stalled},\"violations\":{broken}}}",
            seeds.len()
        );
    } else {
        println!(
            "seeds: {}  steps: {steps}  failures injected: {failures}  journals replayed: {replayed}  violations: {broken}",
            seeds.len()
        );
    }
    if broken > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
