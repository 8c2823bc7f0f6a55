//! The root job's seccomp filter, written as a binary search over system
//! call numbers.
//!
//! A general compiler (seccompiler) emits one comparison after another: the
//! job's filter was 330 instructions, and every job paid for them when it
//! attached it (the kernel converts and JIT-compiles the program and runs
//! it once per system call number to fill its cache of fixed answers): 137
//! µs a job for it and a second, 15-instruction filter (28 µs), measured
//! with `sandbox::attach_cost::measure_attach`. Here a deny list compiles
//! to a search tree, both lists in one program of 239 instructions: a call
//! not on it is answered after about a dozen, and attaching it takes 60 µs.
//!
//! What a filter says: a call on the list is refused with its errno when
//! one of its rules holds, or always if it has none; a rule holds when each
//! of its (argument, bits) has all those bits set in that argument's low 32
//! bits. Any other call is allowed. Another architecture is killed, and on
//! x86_64 so is any x32 call number is refused (the kernel may run those,
//! and a deny list written for x86_64 numbers would not see them).

use seccompiler::{BpfProgram, sock_filter};

const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of argument `i` (little-endian).
#[cfg(target_endian = "little")]
const fn arg_low(i: u8) -> u32 {
    16 + 8 * i as u32
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// Calls from the x32 ABI carry this bit in their number.
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;

/// A leaf of the search: calls compared one by one.
const LEAF: usize = 4;

/// One refused call.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) nr: i64,
    pub(crate) errno: i32,
    /// Empty: always refused.
    pub(crate) rules: Vec<Vec<(u8, u32)>>,
}

#[derive(Debug, Clone, Copy)]
enum To {
    Next,
    Label(usize),
}

/// Instructions with jumps to labels, resolved at the end.
#[derive(Debug, Default)]
struct Asm {
    code: Vec<(u16, To, To, u32)>,
    labels: Vec<usize>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(usize::MAX);
        self.labels.len() - 1
    }
    fn here(&mut self, label: usize) {
        self.labels[label] = self.code.len();
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push((code, To::Next, To::Next, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.code.push((code, jt, jf, k));
    }

    fn finish(self) -> Result<BpfProgram, String> {
        let offset = |at: usize, to: To| -> Result<u8, String> {
            let target = match to {
                To::Next => return Ok(0),
                To::Label(l) => self.labels[l],
            };
            target
                .checked_sub(at + 1)
                .and_then(|o| u8::try_from(o).ok())
                .ok_or_else(|| format!("a jump from {at} to {target} does not fit"))
        };
        let mut out = Vec::with_capacity(self.code.len());
        for (at, &(code, jt, jf, k)) in self.code.iter().enumerate() {
            out.push(sock_filter { code, jt: offset(at, jt)?, jf: offset(at, jf)?, k });
        }
        Ok(out)
    }
}

/// Compiles `refused` (each call number once) into a filter.
pub(crate) fn deny(refused: &[Refusal]) -> Result<BpfProgram, String> {
    let mut calls: Vec<(u32, usize)> = Vec::new();
    let mut a = Asm::default();
    let (kill, allow) = (a.label(), a.label());
    let mut refuse: Vec<(i32, usize)> = Vec::new();
    let mut refuse_with = |a: &mut Asm, errno: i32| match refuse.iter().find(|r| r.0 == errno) {
        Some(&(_, l)) => l,
        None => {
            let l = a.label();
            refuse.push((errno, l));
            l
        }
    };
    let mut handlers = Vec::new();
    for r in refused {
        let nr = u32::try_from(r.nr).map_err(|_| format!("call number {}", r.nr))?;
        let handler = a.label();
        calls.push((nr, handler));
        handlers.push((handler, refuse_with(&mut a, r.errno), &r.rules));
    }
    calls.sort_unstable();
    if calls.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("a call is listed twice".into());
    }
    a.stmt(LD_ABS, ARCH);
    a.jump(JEQ_K, AUDIT_ARCH, To::Next, To::Label(kill));
    a.stmt(LD_ABS, NR);
    #[cfg(target_arch = "x86_64")]
    {
        let eperm = refuse_with(&mut a, libc::EPERM);
        a.jump(JGE_K, X32_BIT, To::Label(eperm), To::Next);
    }
    search(&mut a, &calls, allow);
    for (handler, refusal, rules) in handlers {
        a.here(handler);
        if rules.is_empty() {
            a.jump(JEQ_K, 0, To::Label(refusal), To::Label(refusal));
            continue;
        }
        for rule in rules {
            let next = a.label();
            for &(arg, bits) in rule {
                a.stmt(LD_ABS, arg_low(arg));
                a.stmt(AND_K, bits);
                a.jump(JEQ_K, bits, To::Next, To::Label(next));
            }
            a.jump(JEQ_K, 0, To::Label(refusal), To::Label(refusal));
            a.here(next);
        }
        a.stmt(RET_K, libc::SECCOMP_RET_ALLOW);
    }
    a.here(allow);
    a.stmt(RET_K, libc::SECCOMP_RET_ALLOW);
    a.here(kill);
    a.stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS);
    for (errno, label) in refuse {
        a.here(label);
        a.stmt(RET_K, libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA));
    }
    a.finish()
}

/// The search over `calls` (sorted): the accumulator holds the number.
fn search(a: &mut Asm, calls: &[(u32, usize)], allow: usize) {
    if calls.len() <= LEAF {
        for &(nr, handler) in calls {
            a.jump(JEQ_K, nr, To::Label(handler), To::Next);
        }
        a.jump(JEQ_K, 0, To::Label(allow), To::Label(allow));
        return;
    }
    let (low, high) = calls.split_at(calls.len() / 2);
    let upper = a.label();
    a.jump(JGE_K, high[0].0, To::Label(upper), To::Next);
    search(a, low, allow);
    a.here(upper);
    search(a, high, allow);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the filter answers for `nr` and its arguments: the classic BPF
    /// of a seccomp filter run by hand, as the kernel would.
    pub(crate) fn answer(prog: &BpfProgram, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        run(prog, arch, nr, args).0
    }

    /// (answer, instructions run; `usize::MAX` when it read an argument:
    /// such a call is never answered from the kernel's cache anyway).
    fn run(prog: &BpfProgram, arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |off: u32| -> u32 {
            match off {
                NR => nr,
                ARCH => arch,
                o => {
                    let i = ((o - 16) / 8) as usize;
                    if (o - 16) % 8 == 0 { args[i] as u32 } else { (args[i] >> 32) as u32 }
                }
            }
        };
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            steps += 1;
            match i.code {
                LD_ABS if i.k > ARCH => {
                    acc = word(i.k);
                    steps = usize::MAX / 2;
                }
                LD_ABS => acc = word(i.k),
                AND_K => acc &= i.k,
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
                RET_K => return (i.k, steps),
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    /// What made the old filter slow to attach, held as a bound: the
    /// kernel runs the program once per call number when it is attached,
    /// and a call not on the list now costs a search, not the whole list.
    #[test]
    fn the_jobs_filter_answers_any_other_call_in_sixteen_steps_at_most() {
        let [prog] = crate::sandbox::job_filters().unwrap();
        assert!(prog.len() < 256, "{} instructions", prog.len());
        let worst = (0..460u32)
            .map(|nr| run(&prog, AUDIT_ARCH, nr, [0; 6]))
            .filter(|&(a, steps)| a == libc::SECCOMP_RET_ALLOW && steps < usize::MAX / 2)
            .map(|(_, steps)| steps)
            .max()
            .unwrap();
        // 13 today; seccompiler's chain compared it with every listed call.
        assert!(worst <= 16, "an allowed call takes {worst} steps");
    }

    #[test]
    fn the_search_refuses_exactly_the_listed_calls_and_rules() {
        let mut refused: Vec<Refusal> =
            (0..40).map(|n| Refusal { nr: n * 7 + 3, errno: libc::EPERM, rules: vec![] }).collect();
        refused.push(Refusal { nr: 500, errno: libc::ENOSYS, rules: vec![] });
        refused.push(Refusal {
            nr: 600,
            errno: libc::EPERM,
            rules: vec![vec![(0, 0x10)], vec![(1, 0x40), (2, 0x800)]],
        });
        let prog = deny(&refused).unwrap();
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        for nr in 0..700u32 {
            let want = if nr < 283 && nr % 7 == 3 {
                eperm
            } else if nr == 500 {
                enosys
            } else {
                allow
            };
            if nr != 600 {
                assert_eq!(answer(&prog, AUDIT_ARCH, nr, [0; 6]), want, "call {nr}");
            }
        }
        let with = |args| answer(&prog, AUDIT_ARCH, 600, args);
        assert_eq!(with([0x10, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(with([0x1_0000_0010, 0, 0, 0, 0, 0]), eperm, "low 32 bits");
        assert_eq!(with([0x1_0000_0000, 0, 0, 0, 0, 0]), allow);
        assert_eq!(with([0, 0x40, 0, 0, 0, 0]), allow, "both bits of the rule");
        assert_eq!(with([0, 0x40, 0x800, 0, 0, 0]), eperm);
        assert_eq!(with([0, 0xff, 0xfff, 0, 0, 0]), eperm);
        assert_eq!(answer(&prog, 0xdead, 3, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(answer(&prog, AUDIT_ARCH, X32_BIT | 39, [0; 6]), eperm, "x32");
        assert!(deny(&[refused[0].clone(), refused[0].clone()]).is_err());
    }
}
