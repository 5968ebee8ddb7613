//! A hypervisor accounting guest memory: VMs are groups under tenant groups, guest pages are
//! charged when they fault in on the VM's vCPU threads, and `min`/`low` protection decides
//! whose memory the balloon takes back first.
//!
//! ```text
//! cargo run --example hypervisor
//! ```
//!
//! # vCPU threads and the CPU provider
//!
//! Every VM runs two vCPU threads for as long as it lives, each pinned to an index of the
//! example's own [`CpuProvider`], [`VcpuSlots`]: a vCPU thread claims its index when it
//! starts and gives it back when it exits, and no other thread can hold that index
//! meanwhile. Each vCPU owns half of its guest's frames, and everything that happens to a
//! frame happens on that vCPU's thread: the fault that charges it, the balloon that frees
//! it, the migration that moves its charge. So charges and uncharges go through the vCPU's
//! per-CPU stock (the tree keeps the default batch of 64 pages).
//!
//! The VMM (the main thread) holds no index; what it does bypasses the stocks. Before it reads
//! exact numbers, it takes the units that idle vCPUs hold pre-charged in their stocks back
//! with [`Tree::drain_all`], and a vCPU that hands pages to the balloon gives its own cached
//! units back with them ([`Tree::drain_local`]).
//!
//! # The walk-through
//!
//! Each step is checked with assertions, so that a change of behaviour fails it:
//!
//! 1. **Boot.** A host (the tree's root) with two tenants, `acme` (protected: `min` and `low`)
//!    and `globex` (not protected), each with two VMs. All four VMs boot at once, every vCPU
//!    faulting in its own frames; every guest frame that faults in is charged with
//!    `try_charge(1)` to its VM's group and records its owner in an `OwnerCell`. Then vm-g2
//!    touches the rest of its memory, which brings globex to its limit, and its next fault is
//!    refused, naming the tenant.
//! 2. **Migration.** A VM moves from `globex` to `acme`: a new VM group under `acme`, every
//!    frame's charge and owner pointer moved with `OwnerCell::move_charge` by the vCPU that
//!    owns the frame, the old group taken offline and freed.
//! 3. **Light pressure.** The host wants pages back. The balloon driver follows
//!    `Group::walk_reclaim` from the host with recursive protection: only unprotected memory
//!    is taken, and no `low` event is raised.
//! 4. **Heavy pressure.** The host must shrink below what unprotected memory can give. The
//!    balloon takes memory above `acme`'s `low` first, then, in a second pass that raises
//!    `low` events, memory within it, and never memory within a VM's effective `min`.
//! 5. **Destruction.** A VM is destroyed: its group goes offline while its frames still point
//!    at it ("dying"), its vCPUs free the frames and exit (their indices are free again), and
//!    the group is released and freed (seen by an `Observer` and in `TreeStats`).
//!
//! Units are 4 KiB guest pages.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, Scope, ScopedJoinHandle};

use chargetree::counter::LimitError;
use chargetree::cpu::CpuProvider;
use chargetree::group::{ChargeFailure, GroupId, GroupSpec, MoveError, Observer, OwnerCell, TreeConfig};

/// 4 KiB pages per MiB.
const MIB: usize = 256;
/// vCPU threads per VM.
const VCPUS: usize = 2;
/// VMs the host runs; the provider has an index for each of their vCPUs.
const VMS: usize = 4;

type Tree = chargetree::group::Tree<VcpuSlots>;
type Group = chargetree::group::Group<VcpuSlots>;
type Frame = Option<OwnerCell<VcpuSlots>>;

// ---------------------------------------------------------------------------------------------
// The CPU provider: one index per vCPU thread.

/// The hypervisor's CPU provider: index `i` belongs to whichever vCPU thread pinned it with
/// [`VcpuSlots::try_pin`], until that thread drops its [`Pinned`]. Other threads (the VMM)
/// get `None` and bypass the per-CPU stocks.
///
/// A real hypervisor would also pin each vCPU thread to a host CPU (`sched_setaffinity`);
/// chargetree does not need that: the index belongs to the thread, so the OS may migrate the
/// thread between host CPUs without two threads ever sharing an index.
#[derive(Clone, Debug)]
struct VcpuSlots {
    claimed: Arc<[AtomicBool]>,
}

std::thread_local! {
    /// The vCPU index this thread is pinned to, with the identity of the provider that
    /// handed it out (so that another tree's provider does not take it for its own).
    static PINNED: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

impl VcpuSlots {
    fn new(count: usize) -> Self {
        Self { claimed: (0..count).map(|_| AtomicBool::new(false)).collect() }
    }

    /// The identity of this provider and its clones (the claim table's address).
    fn id(&self) -> usize {
        Arc::as_ptr(&self.claimed).cast::<AtomicBool>() as usize
    }

    /// Pins the calling thread to `index`, or `None` if another thread holds it. Panics if
    /// this thread already holds an index.
    fn try_pin(&self, index: usize) -> Option<Pinned> {
        assert!(PINNED.get().is_none(), "this thread already runs a vCPU");
        // ORDERING: Acquire pairs with the Release store in `Pinned::drop` of the thread
        // that held the index before: what it did through the index (its stock slot)
        // happens before what this thread does. The swap is a read-modify-write, so of two
        // threads claiming one index at once exactly one sees it free.
        if self.claimed[index].swap(true, Ordering::Acquire) {
            return None;
        }
        PINNED.set(Some((self.id(), index)));
        Some(Pinned { slots: self.clone(), index, _not_send: PhantomData })
    }

    fn is_pinned(&self, index: usize) -> bool {
        // ORDERING: Relaxed; a status read.
        self.claimed[index].load(Ordering::Relaxed)
    }
}

/// A thread's claim on a vCPU index; dropping it gives the index back. Not `Send`: the claim
/// belongs to the thread that made it (the thread-local above says so).
struct Pinned {
    slots: VcpuSlots,
    index: usize,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        PINNED.set(None);
        // ORDERING: Release pairs with the Acquire swap in `try_pin` (see there).
        self.slots.claimed[self.index].store(false, Ordering::Release);
    }
}

// SAFETY: the embedder's contract, point by point:
// 1. `count` is the length of the claim table, fixed at construction.
// 2. `current` returns `Some(i)` only for an `i` that `try_pin` indexed the table with, so
//    `i < count`.
// 3. Exclusivity: `current` returns `Some(i)` only on the thread whose thread-local records
//    `(this provider, i)`, and `try_pin` records that only after winning the claim flag of
//    `i` with a swap, which no other thread can win until this one drops its `Pinned`
//    (clearing its thread-local first). `Pinned` is not `Send`, so the claim cannot move to
//    another thread. The provider's identity in the thread-local is the claim table's
//    address, which the `Pinned` keeps alive, so no other provider can take it over while a
//    thread holds an index. Hence at any moment at most one thread sees index `i`; the only
//    nested contexts on it would be its signal handlers, and this program installs none that
//    call chargetree. Threads that never pinned (the VMM) get `None`.
unsafe impl CpuProvider for VcpuSlots {
    fn count(&self) -> usize {
        self.claimed.len()
    }

    fn current(&self) -> Option<usize> {
        match PINNED.get() {
            Some((provider, index)) if provider == self.id() => Some(index),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// vCPU threads.

/// What a vCPU thread owns: its share of the guest's frames.
struct VcpuState<'t> {
    tree: &'t Tree,
    /// The VM's group (replaced when the VM migrates).
    group: Group,
    /// The first guest frame number this vCPU owns; `frames[i]` is frame `first + i`. A
    /// backed frame records its owner.
    first: usize,
    frames: Vec<Frame>,
}

impl VcpuState<'_> {
    /// The guest touches frame `gfn`: the first touch faults it in and charges one page.
    fn fault(&mut self, gfn: usize) -> Result<(), ChargeFailure> {
        let frame = &mut self.frames[gfn - self.first];
        if frame.is_none() {
            let charged = self.group.try_charge(1)?;
            assert!(charged.over_high.is_none(), "no `high` is set in this example");
            *frame = Some(OwnerCell::new(self.group.clone()));
        }
        Ok(())
    }

    /// The guest touches its frames below `end`; returns how many faulted in.
    fn touch(&mut self, end: usize) -> Result<usize, ChargeFailure> {
        let before = self.resident();
        let end = end.clamp(self.first, self.first + self.frames.len());
        (self.first..end).try_for_each(|gfn| self.fault(gfn))?;
        Ok(self.resident() - before)
    }

    fn resident(&self) -> usize {
        self.frames.iter().filter(|f| f.is_some()).count()
    }

    /// The balloon driver in the guest gives back up to `pages` frames (highest first), and
    /// this vCPU returns the units its stock cached meanwhile.
    fn inflate_balloon(&mut self, pages: usize) -> usize {
        let mut freed = 0;
        for frame in self.frames.iter_mut().rev() {
            if freed == pages {
                break;
            }
            if free_frame(frame) {
                freed += 1;
            }
        }
        self.tree.drain_local();
        freed
    }

    /// Moves every backed frame's charge and owner pointer to `to`.
    fn migrate(&mut self, to: &Group) -> Result<usize, MoveError> {
        let mut moved = 0;
        for cell in self.frames.iter().flatten() {
            cell.move_charge(to, 1)?;
            moved += 1;
        }
        self.group = to.clone();
        Ok(moved)
    }

    /// Whether every backed frame's owner pointer names `group`.
    fn owned_by(&self, group: &Group) -> bool {
        let guard = self.tree.pin();
        self.frames.iter().flatten().all(|c| c.load(&guard).is_some_and(|g| g.is(group)))
    }
}

type Job<'s> = Box<dyn FnOnce(&mut VcpuState<'s>) + Send + 's>;

/// The VMM's handle on a vCPU thread: it sends the thread jobs and waits for their results.
struct Vcpu<'s> {
    index: usize,
    /// The frames it owns.
    gfns: std::ops::Range<usize>,
    jobs: mpsc::Sender<Job<'s>>,
    thread: ScopedJoinHandle<'s, ()>,
}

/// A job's result, to wait for.
struct Pending<R>(mpsc::Receiver<R>);

impl<R> Pending<R> {
    fn wait(self) -> R {
        self.0.recv().expect("the vCPU thread ran the job")
    }
}

impl<'s> Vcpu<'s> {
    /// Starts the thread of vCPU `index`, owning frames `first..first + frames`.
    fn spawn(
        scope: &'s Scope<'s, '_>,
        tree: &'s Tree,
        index: usize,
        group: Group,
        first: usize,
        frames: usize,
    ) -> Self {
        let (jobs, queue) = mpsc::channel::<Job<'s>>();
        let thread = scope.spawn(move || {
            let _pinned = tree.cpus().try_pin(index).expect("each vCPU has its own index");
            let mut state = VcpuState { tree, group, first, frames: (0..frames).map(|_| None).collect() };
            for job in queue {
                job(&mut state);
            }
            // The VMM hung up: the VM is gone. Its frames and group handle go with the
            // state, then the index is given back.
        });
        Self { index, gfns: first..first + frames, jobs, thread }
    }

    /// Starts `f` on the vCPU thread.
    fn start<R: Send + 's>(&self, f: impl FnOnce(&mut VcpuState<'s>) -> R + Send + 's) -> Pending<R> {
        let (done, result) = mpsc::channel();
        let job: Job<'s> = Box::new(move |state| {
            let _ = done.send(f(state));
        });
        self.jobs.send(job).expect("the vCPU thread runs");
        Pending(result)
    }

    /// Runs `f` on the vCPU thread and waits for it.
    fn run<R: Send + 's>(&self, f: impl FnOnce(&mut VcpuState<'s>) -> R + Send + 's) -> R {
        self.start(f).wait()
    }

    /// Stops the thread: the VMM hangs up and waits for it to exit.
    fn exit(self) {
        drop(self.jobs);
        self.thread.join().expect("the vCPU thread exited cleanly");
    }
}

/// One guest: its group and its vCPUs; vCPU `k` owns the `k`-th part of the guest's frames.
struct Vm<'s> {
    name: &'static str,
    group: Group,
    vcpus: Vec<Vcpu<'s>>,
}

impl<'s> Vm<'s> {
    /// Creates the VM's group under `tenant` and starts its vCPUs on indices
    /// `first_index..first_index + VCPUS`.
    fn new(
        scope: &'s Scope<'s, '_>,
        tree: &'s Tree,
        name: &'static str,
        tenant: &Group,
        ram_pages: usize,
        spec: GroupSpec<'_>,
        first_index: usize,
    ) -> Self {
        let group = tenant.create_child(spec.name(name).max(ram_pages)).expect("tenant online");
        let share = ram_pages / VCPUS;
        let vcpus = (0..VCPUS)
            .map(|k| Vcpu::spawn(scope, tree, first_index + k, group.clone(), k * share, share))
            .collect();
        Self { name, group, vcpus }
    }

    /// The guest starts touching its first `pages` frames: each vCPU faults in its own.
    fn start_touch(&self, pages: usize) -> Vec<Pending<Result<usize, ChargeFailure>>> {
        self.vcpus.iter().map(|v| v.start(move |s| s.touch(pages))).collect()
    }

    /// The guest touches its first `pages` frames and waits for its vCPUs.
    fn touch(&self, pages: usize) -> Result<usize, ChargeFailure> {
        wait_touch(self.start_touch(pages))
    }

    /// The guest touches frame `gfn`, on the vCPU that owns it.
    fn fault(&self, gfn: usize) -> Result<(), ChargeFailure> {
        let vcpu = self.vcpus.iter().find(|v| v.gfns.contains(&gfn)).expect("a frame of the guest");
        vcpu.run(move |s| s.fault(gfn))
    }

    fn resident(&self) -> usize {
        self.vcpus.iter().map(|v| v.run(|s| s.resident())).sum()
    }

    /// The balloon driver in the guest gives back up to `pages` frames, highest first: the
    /// last vCPU's frames first.
    fn inflate_balloon(&self, pages: usize) -> usize {
        let mut freed = 0;
        for v in self.vcpus.iter().rev() {
            let wanted = pages - freed;
            if wanted == 0 {
                break;
            }
            freed += v.run(move |s| s.inflate_balloon(wanted));
        }
        freed
    }

    /// Moves every frame's charge and owner to `to` (each vCPU its own frames, at once).
    fn migrate(&mut self, to: &Group) -> Result<usize, MoveError> {
        let pending: Vec<_> = self
            .vcpus
            .iter()
            .map(|v| {
                let to = to.clone();
                v.start(move |s| s.migrate(&to))
            })
            .collect();
        let moved = pending.into_iter().map(Pending::wait).sum::<Result<usize, MoveError>>()?;
        self.group = to.clone();
        Ok(moved)
    }

    fn owned_by(&self, group: &Group) -> bool {
        self.vcpus.iter().all(|v| {
            let group = group.clone();
            v.run(move |s| s.owned_by(&group))
        })
    }

    fn free_all(&self) -> usize {
        self.vcpus
            .iter()
            .map(|v| v.run(|s| s.frames.iter_mut().map(|f| usize::from(free_frame(f))).sum::<usize>()))
            .sum()
    }

    /// Stops the VM's vCPU threads (after `free_all`, they hold no frames).
    fn shut_down(self) -> (&'static str, Group, Vec<usize>) {
        let indices = self.vcpus.iter().map(|v| v.index).collect();
        for v in self.vcpus {
            v.exit();
        }
        (self.name, self.group, indices)
    }
}

/// Waits for touches started with [`Vm::start_touch`]; the first refusal, if any.
fn wait_touch(pending: Vec<Pending<Result<usize, ChargeFailure>>>) -> Result<usize, ChargeFailure> {
    pending.into_iter().map(Pending::wait).sum()
}

/// Frees one guest frame: empties its owner cell and uncharges the group the cell named
/// (after a move, the new group: the charge went with the pointer). Dropping the handle the
/// cell gave back puts the frame's reference on the group.
fn free_frame(frame: &mut Frame) -> bool {
    let Some(cell) = frame.take() else { return false };
    let owner = cell.take().expect("a backed frame has an owner");
    owner.uncharge(1);
    true
}

/// Counts releases and frees. `released` may run inside an allocator in other programs: it
/// only touches atomics.
#[derive(Default)]
struct Lifecycle {
    released: AtomicUsize,
    freed: AtomicUsize,
    last_freed: AtomicUsize,
}

struct LifecycleObserver(Arc<Lifecycle>);

impl Observer for LifecycleObserver {
    fn released(&self, _id: GroupId) {
        self.0.released.fetch_add(1, Ordering::Relaxed);
    }
    fn freed(&self, id: GroupId) {
        self.0.freed.fetch_add(1, Ordering::Relaxed);
        self.0.last_freed.store(id.index(), Ordering::Relaxed);
    }
}

/// One balloon request: walks the host's tree in `walk_reclaim`'s order (recursive
/// protection) until `pages` are freed or nothing more can be. Returns what each VM gave,
/// per pass, and the pages freed.
///
/// A visited VM gives at most what lies above its protection: above its effective `low` in
/// the first pass, above its effective `min` in the second (the `low` pass, which the walk
/// only makes when the first fell short, raising the VM's `low` event). Linux scales reclaim
/// the same way and loops over priorities; the driver loops over walks, because taking pages
/// from one VM changes the shares of its siblings.
fn balloon(host: &Group, vms: &[Vm<'_>], pages: usize) -> (Vec<(&'static str, usize, bool)>, usize) {
    let mut given: Vec<(&'static str, usize, bool)> = Vec::new();
    let mut total = 0;
    for _ in 0..64 {
        if total >= pages {
            break;
        }
        let walk = host.walk_reclaim(pages - total, true, |g, wanted| {
            let Some(vm) = vms.iter().find(|vm| vm.group.ptr_eq(g)) else {
                return 0; // the host or a tenant: no frames of its own
            };
            let c = g.counter();
            let (usage, emin, elow) = (c.usage(), c.effective_min(), c.effective_low());
            // Visited above its effective low: first pass. Within it: the low pass.
            let low_pass = usage <= elow;
            let floor = if low_pass { emin } else { elow.max(emin) };
            let freed = vm.inflate_balloon(wanted.min(usage.saturating_sub(floor)));
            if freed > 0 {
                match given.iter_mut().find(|(n, _, lp)| *n == vm.name && *lp == low_pass) {
                    Some(entry) => entry.1 += freed,
                    None => given.push((vm.name, freed, low_pass)),
                }
            }
            freed
        });
        if walk.reclaimed == 0 {
            break;
        }
        total += walk.reclaimed;
    }
    (given, total)
}

fn mib(pages: usize) -> String {
    format!("{:.1} MiB", pages as f64 / MIB as f64)
}

fn show(tree: &Tree) {
    println!("    {:<12} {:>6} {:>6} {:>6} {:>6} {:>6}", "group", "pages", "max", "min", "low", "low ev");
    for g in tree.groups() {
        let c = g.counter();
        let depth = c.depth();
        let name = format!("{}{}", "  ".repeat(depth), g.name().unwrap_or("?"));
        let max = if c.max() == chargetree::COUNTER_MAX { "-".to_owned() } else { c.max().to_string() };
        println!(
            "    {name:<12} {:>6} {max:>6} {:>6} {:>6} {:>6}",
            c.usage(),
            c.min(),
            c.low(),
            g.events_local().low
        );
    }
}

fn usage(g: &Group) -> usize {
    g.counter().usage()
}

fn main() {
    let lifecycle = Arc::new(Lifecycle::default());
    // One index per vCPU thread; the default batch, so faults go through the vCPUs' stocks.
    let tree = Tree::with_config(
        TreeConfig::with_cpus(VcpuSlots::new(VMS * VCPUS))
            .root(GroupSpec::new().name("host").max(24 * MIB))
            .observer(LifecycleObserver(lifecycle.clone())),
    );
    thread::scope(|scope| run(scope, &tree, &lifecycle));
    // Every vCPU thread has exited (the scope joined them): no index is held.
    assert!((0..VMS * VCPUS).all(|i| !tree.cpus().is_pinned(i)));
}

fn run<'s>(scope: &'s Scope<'s, '_>, tree: &'s Tree, lifecycle: &Lifecycle) {
    let host = tree.root();

    // ---------------------------------------------------------------------------------------
    println!("1. Boot: a 24 MiB host, two tenants, four VMs of 8 MiB each, two vCPU threads per VM\n");
    let acme =
        host.create_child(GroupSpec::new().name("acme").max(24 * MIB).min(4 * MIB).low(12 * MIB)).unwrap();
    let globex = host.create_child(GroupSpec::new().name("globex").max(12 * MIB)).unwrap();
    // vm-a1 runs acme's database: 4 MiB of it hard-protected. The tenant must grant `min`
    // too: protection is handed down, never more than the parent has.
    let mut vms = vec![
        Vm::new(scope, tree, "vm-a1", &acme, 8 * MIB, GroupSpec::new().min(4 * MIB), 0),
        Vm::new(scope, tree, "vm-a2", &acme, 8 * MIB, GroupSpec::new(), VCPUS),
        Vm::new(scope, tree, "vm-g1", &globex, 8 * MIB, GroupSpec::new(), 2 * VCPUS),
        Vm::new(scope, tree, "vm-g2", &globex, 8 * MIB, GroupSpec::new(), 3 * VCPUS),
    ];
    // Each guest starts on its first vCPU: 100 faults are 2 counter walks of a 64-page batch,
    // and the vCPU's stock keeps the 28 pages pre-charged but not yet faulted in.
    for vm in &vms {
        assert_eq!(vm.touch(100), Ok(100));
        assert_eq!((usage(&vm.group), vm.group.cached_units()), (128, 28), "{}", vm.name);
    }
    println!(
        "   each guest's first 100 faults: 2 batches of 64 pages on its vCPU 0, 28 of them left in its stock"
    );
    // Then all four boot at once, each vCPU faulting in its own frames (vm-g2 the first 4 MiB).
    let pending: Vec<_> = vms
        .iter()
        .zip([6 * MIB, 4 * MIB, 6 * MIB, 4 * MIB])
        .map(|(vm, pages)| vm.start_touch(pages))
        .collect();
    for (vm, pending) in vms.iter().zip(pending) {
        let pages = 100 + wait_touch(pending).expect("fits");
        println!("   {} faulted in {} pages ({}) on its vCPUs", vm.name, pages, mib(pages));
    }
    // Each index is its vCPU thread's alone: the VMM cannot take one, and has none.
    assert!(tree.cpus().try_pin(0).is_none(), "vCPU 0's thread holds index 0");
    assert_eq!(tree.cpus().current(), None, "the VMM holds no index");
    // The vCPUs are idle now, their stocks still holding pages pre-charged by the last
    // faults: the VMM takes those back (a remote drain of idle CPUs) to read exact numbers.
    let cached: usize = vms.iter().map(|vm| vm.group.cached_units()).sum();
    let drained = tree.drain_all(&host).expect("no other drain under way");
    println!("   the idle vCPUs' stocks held {drained} pre-charged pages; the VMM drained them");
    assert_eq!(drained, cached);
    assert!(vms.iter().all(|vm| vm.group.cached_units() == 0));
    assert_eq!((usage(&acme), usage(&globex), usage(&host)), (2560, 2560, 5120));
    // vm-g2 touches the rest of its 6 MiB (frames of its second vCPU): globex reaches 12 MiB.
    assert_eq!(vms[3].touch(6 * MIB).expect("globex's limit is exactly reached"), 512);
    tree.drain_all(&host).expect("no other drain under way");
    assert_eq!((usage(&acme), usage(&globex), usage(&host)), (2560, 3072, 5632));
    // globex is at its 12 MiB: vm-g2's next fault is refused, naming globex.
    let refused = vms[3].fault(6 * MIB).unwrap_err();
    println!("   vm-g2 touches one more page: refused by globex: {refused}");
    match refused {
        ChargeFailure::Limit { group, max, usage, requested, .. } => {
            assert_eq!((group, max, usage, requested), (globex.id(), 3072, 3072, 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((globex.events_local().max, globex.events_local().oom), (1, 1));
    println!("   (globex's `max` and `oom` events count it; the VM would be paused or ballooned)\n");
    show(tree);

    // ---------------------------------------------------------------------------------------
    println!("\n2. Migration: globex hands vm-g2 over to acme\n");
    let old = vms[3].group.clone();
    let new = acme.create_child(GroupSpec::new().name("vm-g2").max(8 * MIB)).unwrap();
    let moved = vms[3].migrate(&new).expect("acme has room");
    assert!(vms[3].owned_by(&new), "every frame's owner pointer names the new group");
    println!(
        "   moved {moved} frames on vm-g2's vCPUs: charge and owner pointer of each, with OwnerCell::move_charge"
    );
    assert_eq!(moved, 1536);
    assert_eq!((usage(&old), usage(&new)), (0, 1536));
    assert_eq!(
        (usage(&acme), usage(&globex), usage(&host)),
        (4096, 1536, 5632),
        "the host total is unchanged"
    );
    let old_id = old.id();
    old.offline().unwrap();
    drop(old);
    tree.reclaim();
    assert_eq!(lifecycle.last_freed.load(Ordering::Relaxed), old_id.index());
    println!(
        "   the old vm-g2 group went offline and was freed (observer: {} released, {} freed)\n",
        lifecycle.released.load(Ordering::Relaxed),
        lifecycle.freed.load(Ordering::Relaxed)
    );
    assert_eq!(tree.stats().dying(), 0);
    show(tree);

    // ---------------------------------------------------------------------------------------
    println!("\n3. Light pressure: the host wants 4 MiB (1024 pages) back\n");
    let before: Vec<usize> = vms.iter().map(Vm::resident).collect();
    let (given, freed) = balloon(&host, &vms, 4 * MIB);
    for (name, pages, low_pass) in &given {
        println!(
            "   {name} gave {pages} pages{}",
            if *low_pass { " from within its low (low event)" } else { "" }
        );
    }
    assert_eq!(freed, 1024);
    assert_eq!(given, vec![("vm-g1", 1024, false)], "only unprotected memory was taken");
    assert_eq!(vms[0].resident(), before[0]);
    assert_eq!(vms[1].resident(), before[1]);
    assert_eq!(vms[3].resident(), before[3]);
    assert_eq!(host.events().low, 0, "nothing protected was touched: no `low` event anywhere");
    println!("   acme's VMs kept everything (acme's low covers 12 MiB); no `low` event was raised\n");
    show(tree);

    // ---------------------------------------------------------------------------------------
    println!("\n4. Heavy pressure: the host must shrink from 24 MiB to 10 MiB (2560 pages)\n");
    let shrink = 10 * MIB;
    let busy = host.set_max(shrink).unwrap_err();
    println!("   set_max refuses while usage is above it: {busy}");
    assert_eq!(busy, LimitError::Busy { usage: 4608, limit: 2560 });
    let (given, freed) = balloon(&host, &vms, usage(&host) - shrink);
    for (name, pages, low_pass) in &given {
        let how =
            if *low_pass { "within its protection (second pass: low event)" } else { "above its protection" };
        println!("   {name:<6} gave {pages:>4} pages {how}");
    }
    assert_eq!(freed, 2048);
    host.set_max(shrink).unwrap();
    println!("   set_max({shrink}) now succeeds; usage {}", usage(&host));
    println!(
        "   (first pass: vm-g1 had no protection; acme's 12 MiB low is shared among its VMs in\n    \
         proportion to their usage (recursive protection), each gave what it held above its\n    \
         share; only then the second pass took memory within a share, raising `low`)\n"
    );
    // Unprotected memory went first: vm-g1 gave everything it had in the first pass, and
    // acme gave only what lay above its low (12 MiB) in the first pass.
    assert_eq!(vms[2].resident(), 0);
    let first_pass: usize = given.iter().filter(|g| !g.2).map(|g| g.1).sum();
    let low_pass: usize = given.iter().filter(|g| g.2).map(|g| g.1).sum();
    assert_eq!((first_pass, low_pass), (512 + 1024, 512), "first pass: globex + acme above low");
    // The low pass was needed, and raised `low` exactly where it took memory.
    let low_events: Vec<(&str, usize)> =
        vms.iter().map(|vm| (vm.name, vm.group.events_local().low)).collect();
    for (name, _, low_pass) in &given {
        if *low_pass {
            assert!(low_events.iter().any(|(n, e)| n == name && *e > 0), "{name} raised low");
        }
    }
    assert_eq!(globex.events().low, 0, "globex had no protection to break");
    assert!(acme.events().low > 0);
    // vm-a1's hard protection held.
    assert!(vms[0].resident() >= 4 * MIB, "vm-a1 keeps its min");
    assert_eq!(usage(&acme), 2560);
    println!(
        "   low events: {}",
        low_events.iter().map(|(n, e)| format!("{n} {e}")).collect::<Vec<_>>().join(", ")
    );
    println!("   vm-a1 kept {} pages: its 4 MiB min was never touched\n", vms[0].resident());
    show(tree);

    // ---------------------------------------------------------------------------------------
    println!("\n5. Destruction: acme deletes vm-a2\n");
    let a2 = vms.remove(1);
    let (a2_id, a2_pages) = (a2.group.id(), a2.resident());
    a2.group.offline().unwrap();
    tree.reclaim();
    assert_eq!(tree.stats().dying(), 1, "offline, but its frames still point at it");
    println!("   vm-a2 is offline; its {a2_pages} frames still hold references: dying 1");
    assert_eq!(a2.free_all(), a2_pages);
    let (name, group, indices) = a2.shut_down();
    drop(group);
    tree.reclaim();
    let stats = tree.stats();
    assert_eq!(stats.dying(), 0);
    assert_eq!(lifecycle.last_freed.load(Ordering::Relaxed), a2_id.index(), "the observer saw it freed");
    println!(
        "   its vCPUs freed its frames and exited: the last references went with them, the group is freed"
    );
    // The vCPUs gave their indices back: a new vCPU thread (here, briefly, the VMM's) can take one.
    assert!(indices.iter().all(|&i| !tree.cpus().is_pinned(i)));
    drop(tree.cpus().try_pin(indices[0]).expect("index free again"));
    println!("   {name}'s vCPU indices {indices:?} are free for the next VM");
    println!(
        "   TreeStats: created {}, offlined {}, released {}, freed {}, dying {}",
        stats.created,
        stats.offlined,
        stats.released,
        stats.freed,
        stats.dying()
    );
    assert_eq!((stats.created, stats.offlined, stats.released, stats.freed), (8, 2, 2, 2));

    // ---------------------------------------------------------------------------------------
    println!("\nShutdown: every guest frame freed, every vCPU thread stopped");
    for vm in vms {
        vm.free_all();
        vm.shut_down();
    }
    tree.drain_all(&host).expect("no other drain under way");
    for g in tree.groups() {
        assert_eq!(usage(&g), 0, "{:?}", g.name());
    }
    println!("   every group's usage is back to 0");
}
