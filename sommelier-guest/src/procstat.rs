//! CPU time per thread from `/proc`, for the benchmarks' accounting (the
//! guest's `/init bench tcp` and the host's `net-bench`).

/// CPU ticks (user + system) of every thread, summed per name: the thread's
/// own (`by_process` false) or "process/thread".
pub fn thread_ticks(by_process: bool) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok().and_then(|s| parse_stat(&s));
    for p in procs.flatten() {
        let Some((pname, _)) = read(p.path().join("stat")) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some((tname, ticks)) = read(t.path().join("stat")) else {
                continue;
            };
            let name = if by_process {
                format!("{pname}/{tname}")
            } else {
                tname
            };
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 = e.1.saturating_add(ticks),
                None => out.push((name, ticks)),
            }
        }
    }
    out
}

/// The name and CPU ticks (utime + stime, fields 14 and 15) of one
/// `/proc/PID[/task/TID]/stat` text: "pid (comm) state ppid …". The name
/// may hold spaces and parentheses; it ends at the last ')'.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ticks = f
        .get(11)?
        .parse::<u64>()
        .ok()?
        .saturating_add(f.get(12)?.parse::<u64>().ok()?);
    Some((stat.get(open + 1..close)?.to_string(), ticks))
}

/// What each name spent between two snapshots, largest first (threads that
/// started in between count from zero; those that spent nothing are left out).
pub fn ticks_since(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut d: Vec<(String, u64)> = after
        .iter()
        .map(|(n, t)| {
            let was = before.iter().find(|(m, _)| m == n).map_or(0, |(_, v)| *v);
            (n.clone(), t.saturating_sub(was))
        })
        .filter(|(_, t)| *t > 0)
        .collect();
    d.sort_by_key(|t| std::cmp::Reverse(t.1));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_ticks_and_odd_ones_nothing() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat(line), Some(("a (b) c".to_string(), 12)));
        for bad in ["", "42 (x", "42 x) S 1", ") (", "42 (x) S 1 2 3"] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ticks_since_counts_growth_largest_first_and_new_threads_from_zero() {
        let before = vec![("a/x".to_string(), 10), ("b/y".to_string(), 5)];
        let after = vec![
            ("a/x".to_string(), 12),
            ("b/y".to_string(), 5),
            ("c/z".to_string(), 7),
        ];
        assert_eq!(
            ticks_since(&before, &after),
            vec![("c/z".to_string(), 7), ("a/x".to_string(), 2)]
        );
    }

    #[test]
    fn this_process_is_counted_under_both_namings() {
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let me = me.trim();
        assert!(thread_ticks(false).iter().any(|(n, _)| n == me));
        let by_process = thread_ticks(true);
        assert!(by_process.iter().all(|(n, _)| n.contains('/')));
        assert!(by_process
            .iter()
            .any(|(n, _)| n.starts_with(&format!("{me}/"))));
    }
}
