//! Compiles `policies/x86_64.json` with seccompiler into one BPF program per
//! thread kind and action (trap = kill mode, log = log mode), written to
//! OUT_DIR and embedded by `src/lib.rs`. Also embeds the syscall names from
//! the kernel headers, for the violation message.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let json = std::fs::read_to_string("policies/x86_64.json").expect("policies/x86_64.json");
    let mut policy: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let kinds: Vec<String> = policy.as_object().unwrap().keys().cloned().collect();
    let mut rs = String::new();
    writeln!(
        rs,
        "/// (thread kind, BPF for kill mode, BPF for log mode, syscalls with rules)"
    )
    .unwrap();
    writeln!(rs, "pub static FILTERS: &[Filter] = &[").unwrap();
    let mut compiled = std::collections::BTreeMap::new();
    for action in ["trap", "log"] {
        for k in &kinds {
            policy[k]["mismatch_action"] = serde_json::Value::String(action.into());
        }
        let text = serde_json::to_string(&policy).unwrap();
        let map = seccompiler::compile_from_json(text.as_bytes(), seccompiler::TargetArch::x86_64)
            .unwrap_or_else(|e| panic!("policies/x86_64.json: {e}"));
        for (k, prog) in map {
            let mut bytes = Vec::with_capacity(prog.len() * 8);
            for i in prog {
                bytes.extend_from_slice(&i.code.to_ne_bytes());
                bytes.push(i.jt);
                bytes.push(i.jf);
                bytes.extend_from_slice(&i.k.to_ne_bytes());
            }
            let file = out.join(format!("{k}.{action}.bpf"));
            std::fs::write(&file, bytes).unwrap();
            compiled.insert((k.clone(), action), file);
        }
    }
    for k in &kinds {
        let mut names: Vec<String> = policy[k]["filter"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["syscall"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names.dedup();
        writeln!(
            rs,
            "    ({k:?}, include_bytes!({:?}), include_bytes!({:?}), &{names:?}),",
            compiled[&(k.clone(), "trap")],
            compiled[&(k.clone(), "log")]
        )
        .unwrap();
    }
    writeln!(rs, "];").unwrap();
    writeln!(
        rs,
        "/// Rules (a syscall, or a syscall with argument conditions) per kind."
    )
    .unwrap();
    writeln!(rs, "pub static RULE_COUNTS: &[(&str, usize)] = &[").unwrap();
    for k in &kinds {
        writeln!(
            rs,
            "    ({k:?}, {}),",
            policy[k]["filter"].as_array().unwrap().len()
        )
        .unwrap();
    }
    writeln!(rs, "];").unwrap();
    // Syscall names by number, for messages (empty without kernel headers).
    let hdr = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
        .or_else(|_| std::fs::read_to_string("/usr/include/asm/unistd_64.h"))
        .unwrap_or_default();
    let mut names = std::collections::BTreeMap::new();
    for l in hdr.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#define"), Some(n), Some(v)) = (w.next(), w.next(), w.next()) {
            if let (Some(n), Ok(v)) = (n.strip_prefix("__NR_"), v.parse::<u32>()) {
                names.insert(v, n.to_string());
            }
        }
    }
    let max = names.keys().max().copied().unwrap_or(0);
    let table: Vec<String> = (0..=max)
        .map(|i| names.get(&i).cloned().unwrap_or_default())
        .collect();
    writeln!(rs, "/// Syscall names by number (x86_64).").unwrap();
    writeln!(rs, "pub static SYSCALL_NAMES: &[&str] = &{table:?};").unwrap();
    std::fs::write(out.join("filters.rs"), rs).unwrap();
    println!("cargo:rerun-if-changed=policies/x86_64.json");
    println!("cargo:rerun-if-changed=build.rs");
}
