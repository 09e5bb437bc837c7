//! Watched-lock hooks on the mutex API. These run for every mutex in the system,
//! so each pays one `WATCHED` lookup and leaves at once for any lock we do not
//! watch. Stacks are taken only on attempts, and only with `LOCK_STACKS`.
use aya_ebpf::{EbpfContext, programs::tracing::StackIdContext};
use trace_common::{HookId, LockOp, Phase, WatchedLock, known};

use crate::{
    emit::{new_event, submit, wanted, watched},
    hook::Call,
};

#[inline(always)]
fn lock_event<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: HookId,
    phase: Phase,
    lock: u64,
    w: &WatchedLock,
    op: LockOp,
    ret: Option<i64>,
) {
    let mut e = new_event(hook, phase);
    e.lock = lock;
    e.lock_class = w.class;
    e.lock_op = op as u8;
    e.arg = w.owner;
    e.known |= known::LOCK | known::ARG;
    if let Some(r) = ret {
        e.ret = r;
        e.known |= known::RET;
    }
    submit(ctx, e, op == LockOp::Attempt);
}

/// Entry of a blocking lock call: report the attempt, and ask for the exit.
#[inline(always)]
fn attempt<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, call: &Call) -> bool {
    let lock = call.arg(0);
    match watched(lock) {
        Some(w) if wanted() => {
            lock_event(ctx, hook, Phase::Entry, lock, &w, LockOp::Attempt, None);
            true
        }
        _ => false,
    }
}

/// Exit: `ok` says whether the return value means the lock is held.
#[inline(always)]
fn returned<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: HookId,
    call: &Call,
    ok: fn(i64) -> bool,
) {
    let lock = call.arg(0);
    if let Some(w) = watched(lock)
        && wanted()
    {
        let ret = call.ret.unwrap_or(0);
        let op = if ok(ret) {
            LockOp::Acquired
        } else {
            LockOp::Failed
        };
        lock_event(ctx, hook, Phase::Exit, lock, &w, op, call.ret);
    }
}

fn zero_ok(r: i64) -> bool {
    r as i32 == 0
}

fn one_ok(r: i64) -> bool {
    r as i32 == 1
}

macro_rules! blocking_lock {
    ($hook:expr, $fentry:ident, $fexit:ident, $kprobe:ident, $kretprobe:ident, $entry:ident, $exit:ident, $ok:path) => {
        entry_exit_hook!($hook, $fentry, $fexit, $kprobe, $kretprobe, $entry, $exit);

        fn $entry<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
            attempt(ctx, $hook, call)
        }

        fn $exit<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
            returned(ctx, $hook, call, $ok)
        }
    };
}

/// A lock call that cannot fail (void): entry only. The engine takes the lock
/// as held once the thread does anything else, or when its contention ends,
/// so the hottest hook pays no fexit (an fexit trampoline calls the function
/// itself and costs more than the whole filter).
macro_rules! void_lock {
    ($hook:expr, $fentry:ident, $kprobe:ident, $entry:ident) => {
        entry_hook!($fentry, $kprobe, $entry);

        fn $entry<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
            attempt(ctx, $hook, call)
        }
    };
}

// void mutex_lock(struct mutex *lock)
void_lock!(
    HookId::MutexLock,
    fentry_mutex_lock,
    kprobe_mutex_lock,
    mutex_lock_entry
);
// int mutex_lock_interruptible(struct mutex *lock): 0 or -EINTR
blocking_lock!(
    HookId::MutexLockInterruptible,
    fentry_mutex_lock_interruptible,
    fexit_mutex_lock_interruptible,
    kprobe_mutex_lock_interruptible,
    kretprobe_mutex_lock_interruptible,
    mutex_lock_interruptible_entry,
    mutex_lock_interruptible_exit,
    zero_ok
);
// int mutex_lock_killable(struct mutex *lock): 0 or -EINTR
blocking_lock!(
    HookId::MutexLockKillable,
    fentry_mutex_lock_killable,
    fexit_mutex_lock_killable,
    kprobe_mutex_lock_killable,
    kretprobe_mutex_lock_killable,
    mutex_lock_killable_entry,
    mutex_lock_killable_exit,
    zero_ok
);
// void mutex_lock_nested(struct mutex *lock, unsigned int subclass): lockdep kernels
void_lock!(
    HookId::MutexLockNested,
    fentry_mutex_lock_nested,
    kprobe_mutex_lock_nested,
    mutex_lock_nested_entry
);

// int mutex_trylock(struct mutex *lock): 1 when taken. Never waits, so no attempt.
exit_hook!(
    HookId::MutexTrylock,
    fexit_mutex_trylock,
    kprobe_mutex_trylock,
    kretprobe_mutex_trylock,
    mutex_trylock_exit,
    is_watched_call
);

fn is_watched_call(call: &Call) -> bool {
    watched(call.arg(0)).is_some()
}

fn mutex_trylock_exit<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    returned(ctx, HookId::MutexTrylock, call, one_ok)
}

// void mutex_unlock(struct mutex *lock)
entry_hook!(fentry_mutex_unlock, kprobe_mutex_unlock, mutex_unlock_entry);

fn mutex_unlock_entry<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    let lock = call.arg(0);
    if let Some(w) = watched(lock)
        && wanted()
    {
        lock_event(
            ctx,
            HookId::MutexUnlock,
            Phase::Entry,
            lock,
            &w,
            LockOp::Released,
            None,
        );
    }
    false
}
