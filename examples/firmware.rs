//! Firmware on a microcontroller with a few fixed pools and no heap: `static` counters with
//! `&'static` parents, a board-specific `CpuProvider`, per-CPU pre-charged budgets in statics,
//! and what the firmware does when a pool says no.
//!
//! ```text
//! cargo run --example firmware                                    # on the host: runs, prints
//! cargo build --example firmware --target thumbv7em-none-eabihf --no-default-features
//! ```
//!
//! The same code is built twice. On the host it is an ordinary program whose `main` runs the
//! scenario and prints it. For `thumbv7em-none-eabihf` (a Cortex-M4F) it is `#![no_std]`,
//! `#![no_main]`, without an allocator (`--no-default-features`: only the counter, which needs
//! no heap), with a `#[panic_handler]` and an ELF entry symbol `_start` that runs the same
//! scenario, so it links with the linker's default layout and no linker script. On a real
//! board the reset handler of the board support crate would call `firmware_main` instead.
//!
//! # The memory budget (units: bytes)
//!
//! ```text
//! SRAM (32 KiB: what the dynamic pools may use together)
//! ├── DMA (16 KiB)            sensor transfers of 4 KiB; a refused transfer is deferred
//! ├── NET (24 KiB, high 12K)  above `high`, the driver sends a pause frame (flow control)
//! │   ├── NET_RX (16 KiB)     filled by the Ethernet interrupt; a refused packet is dropped
//! │   └── NET_TX (12 KiB)     filled in thread mode through a per-CPU pre-charged budget
//! └── LOG (2 KiB)             a ring of log messages; a refused message evicts the oldest
//! ```
//!
//! The pools together may hold 42 KiB, more than SRAM's 32: when SRAM refuses a charge (the
//! error names the counter that refused and how far up it is), the firmware takes memory back
//! from where it hurts least, the bytes pre-charged in per-CPU budgets and the log ring, and
//! tries again.

#![cfg_attr(target_os = "none", no_std, no_main)]

use core::fmt::{self, Write as _};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use chargetree::counter::{ChargeError, Counter, LimitError};
use chargetree::cpu::CpuProvider;

const KIB: usize = 1024;

// ---------------------------------------------------------------------------------------------
// The counters: statics with `&'static` parents. `Counter::new` is `const`; limits are set at
// boot (`set_max` checks the usage, so it is not `const`).

static SRAM: Counter<'static> = Counter::new_root();
static DMA: Counter<'static> = Counter::new(Some(&SRAM));
static NET: Counter<'static> = Counter::new(Some(&SRAM));
static NET_RX: Counter<'static> = Counter::new(Some(&NET));
static NET_TX: Counter<'static> = Counter::new(Some(&NET));
static LOG: Counter<'static> = Counter::new(Some(&SRAM));

/// Every counter with its name, for reports and for naming the one that refused.
static COUNTERS: [(&str, &Counter<'static>); 6] =
    [("sram", &SRAM), ("dma", &DMA), ("net", &NET), ("net-rx", &NET_RX), ("net-tx", &NET_TX), ("log", &LOG)];

fn name_of(c: &Counter<'static>) -> &'static str {
    COUNTERS.iter().find(|(_, x)| ptr::eq(*x, c)).map_or("?", |(n, _)| n)
}

// ---------------------------------------------------------------------------------------------
// The board's CPU provider.

/// Cores on this board: one Cortex-M4F. Per-CPU arrays are sized by it.
const CPUS: usize = 1;

/// The board: one core. Thread mode (the main loop) is CPU 0; exception handlers get no CPU,
/// so they bypass per-CPU state and go straight to the counters, which are lock-free atomics
/// and safe from any context.
struct Board;

// SAFETY:
// 1. `count` is the constant `CPUS`.
// 2. `current` returns `None` or `Some(0)`, and `0 < CPUS`.
// 3. Exclusivity: there is one core, and `Some(0)` is returned only in thread mode (IPSR == 0):
//    the firmware is a bare-metal main loop, so thread mode is a single execution context.
//    Every exception handler (IPSR != 0), which may interrupt thread mode at any instruction,
//    gets `None` and never touches index 0's state. (Firmware with an RTOS that switches
//    threads in thread mode would have to mask interrupts or lock the scheduler around
//    per-CPU accounting instead.)
unsafe impl CpuProvider for Board {
    fn count(&self) -> usize {
        CPUS
    }
    fn current(&self) -> Option<usize> {
        if exception_number() == 0 { Some(0) } else { None }
    }
}

/// The active exception number (the IPSR register; 0 in thread mode). The scenario runs its
/// interrupt service routines through [`simulate_irq`], which sets the simulated part, so the
/// host and the board take the same paths.
fn exception_number() -> u32 {
    #[cfg(all(target_arch = "arm", target_os = "none"))]
    let hw = {
        let ipsr: u32;
        // SAFETY: `mrs` reads a special register into a general one: no memory, stack or
        // flags are touched.
        unsafe { core::arch::asm!("mrs {}, IPSR", out(reg) ipsr, options(nomem, nostack, preserves_flags)) };
        ipsr & 0x1ff
    };
    #[cfg(not(all(target_arch = "arm", target_os = "none")))]
    let hw = 0;
    hw | SIMULATED_EXCEPTION.load(Ordering::Relaxed)
}

static SIMULATED_EXCEPTION: AtomicU32 = AtomicU32::new(0);

/// Runs `isr` as the handler of exception `number` would run (the scenario has no real
/// interrupt controller to pend it on).
fn simulate_irq<R>(number: u32, isr: impl FnOnce() -> R) -> R {
    SIMULATED_EXCEPTION.store(number, Ordering::Relaxed);
    let r = isr();
    SIMULATED_EXCEPTION.store(0, Ordering::Relaxed);
    r
}

/// Runs `f` with interrupts masked (PRIMASK), restoring the previous state: for readings of
/// several counters that no interrupt handler may change halfway.
fn interrupt_free<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(target_arch = "arm", target_os = "none"))]
    {
        let primask: u32;
        // SAFETY: reads PRIMASK and masks interrupts (`cpsid i`); no stack or flags are
        // touched. Not `nomem`: memory accesses must not move out of the critical section.
        unsafe {
            core::arch::asm!("mrs {}, PRIMASK", "cpsid i", out(reg) primask, options(nostack, preserves_flags))
        };
        let r = f();
        if primask & 1 == 0 {
            // SAFETY: unmasks interrupts, which were unmasked on entry.
            unsafe { core::arch::asm!("cpsie i", options(nostack, preserves_flags)) };
        }
        r
    }
    #[cfg(not(all(target_arch = "arm", target_os = "none")))]
    f()
}

// ---------------------------------------------------------------------------------------------
// Per-CPU pre-charged budgets: a charge from thread mode takes bytes already charged to the
// counters from this CPU's slot, touching no shared counter (what the library's per-CPU stock
// does for groups, here in statics, without a heap).

struct PerCpuBudget {
    counter: &'static Counter<'static>,
    /// Bytes charged per counter walk beyond what is asked; the slot holds at most twice it.
    batch: usize,
    slots: [AtomicUsize; CPUS],
    hits: AtomicUsize,
    walks: AtomicUsize,
}

impl PerCpuBudget {
    const fn new(counter: &'static Counter<'static>, batch: usize) -> Self {
        Self {
            counter,
            batch,
            slots: [const { AtomicUsize::new(0) }; CPUS],
            hits: AtomicUsize::new(0),
            walks: AtomicUsize::new(0),
        }
    }

    /// Charges `n` bytes: from this CPU's slot if it has them, else one walk that also
    /// refills the slot, else exactly `n` after giving the slot back.
    fn charge(&'static self, cpus: &impl CpuProvider, n: usize) -> Result<(), ChargeError<'static, 'static>> {
        if let Some(cpu) = cpus.current() {
            let slot = &self.slots[cpu];
            // Plain load and store, no read-modify-write: the provider guarantees that no other
            // context uses this CPU's slot meanwhile (its safety contract, point 3).
            let have = slot.load(Ordering::Relaxed);
            if have >= n {
                slot.store(have - n, Ordering::Relaxed);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            self.walks.fetch_add(1, Ordering::Relaxed);
            if self.counter.try_charge(n + self.batch).is_ok() {
                slot.store(have + self.batch, Ordering::Relaxed);
                return Ok(());
            }
            // Near the limit: the slot's bytes count as used; give them back and try exactly n.
            slot.store(0, Ordering::Relaxed);
            self.counter.uncharge(have);
        } else {
            self.walks.fetch_add(1, Ordering::Relaxed);
        }
        self.counter.try_charge(n)
    }

    /// Uncharges `n` bytes: into this CPU's slot up to twice the batch, the rest to the
    /// counters.
    fn uncharge(&self, cpus: &impl CpuProvider, n: usize) {
        if let Some(cpu) = cpus.current() {
            let slot = &self.slots[cpu];
            let total = slot.load(Ordering::Relaxed) + n;
            if total <= 2 * self.batch {
                slot.store(total, Ordering::Relaxed);
            } else {
                slot.store(self.batch, Ordering::Relaxed);
                self.counter.uncharge(total - self.batch);
            }
            return;
        }
        self.counter.uncharge(n);
    }

    /// Returns every slot's bytes to the counters. Only from thread mode on this single-core
    /// board (handlers never touch the slots), with interrupts masked by the caller when the
    /// result is part of a snapshot.
    fn drain(&self) -> usize {
        let mut total = 0;
        for slot in &self.slots {
            let have = slot.swap(0, Ordering::Relaxed);
            self.counter.uncharge(have);
            total += have;
        }
        total
    }

    fn cached(&self) -> usize {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

static TX_BUDGET: PerCpuBudget = PerCpuBudget::new(&NET_TX, 2 * KIB);
static RX_BUDGET: PerCpuBudget = PerCpuBudget::new(&NET_RX, 2 * KIB);

// ---------------------------------------------------------------------------------------------
// Pools and leases.

/// A pool of buffers accounted in one counter, optionally through a per-CPU budget.
struct Pool {
    counter: &'static Counter<'static>,
    budget: Option<&'static PerCpuBudget>,
}

static DMA_POOL: Pool = Pool { counter: &DMA, budget: None };
static RX_POOL: Pool = Pool { counter: &NET_RX, budget: Some(&RX_BUDGET) };
static TX_POOL: Pool = Pool { counter: &NET_TX, budget: Some(&TX_BUDGET) };

/// `bytes` charged to a pool until dropped (no heap: leases live in fixed arrays).
struct Lease {
    pool: &'static Pool,
    bytes: usize,
}

impl Pool {
    fn alloc(&'static self, bytes: usize) -> Result<Lease, ChargeError<'static, 'static>> {
        match self.budget {
            Some(b) => b.charge(&Board, bytes)?,
            None => self.counter.try_charge(bytes)?,
        }
        Ok(Lease { pool: self, bytes })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self.pool.budget {
            Some(b) => b.uncharge(&Board, self.bytes),
            None => self.pool.counter.uncharge(self.bytes),
        }
    }
}

/// Puts `lease` in the first free slot of `slots`; returns whether there was one.
fn store<const N: usize>(slots: &mut [Option<Lease>; N], lease: Lease) -> bool {
    match slots.iter_mut().find(|s| s.is_none()) {
        Some(s) => {
            *s = Some(lease);
            true
        }
        None => false,
    }
}

fn held<const N: usize>(slots: &[Option<Lease>; N]) -> usize {
    slots.iter().flatten().count()
}

// ---------------------------------------------------------------------------------------------
// The log ring: messages formatted without a heap into a byte ring; LOG's limit decides when
// the oldest ones are evicted.

const LOG_CAPACITY: usize = 2 * KIB;

struct LogRing {
    bytes: [AtomicU8; LOG_CAPACITY],
    /// Index of the oldest byte (monotonic; modulo the capacity).
    head: AtomicUsize,
    /// Index of the next byte to write (monotonic).
    tail: AtomicUsize,
    evicted: AtomicUsize,
}

static LOG_RING: LogRing = LogRing {
    bytes: [const { AtomicU8::new(0) }; LOG_CAPACITY],
    head: AtomicUsize::new(0),
    tail: AtomicUsize::new(0),
    evicted: AtomicUsize::new(0),
};

/// A `fmt::Write` into a fixed buffer, truncating.
struct FixedBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> fmt::Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl LogRing {
    /// Appends a message (thread mode only): a length byte and at most 127 bytes of text,
    /// charged to LOG. When LOG refuses, the oldest messages are evicted until it fits.
    fn log(&self, args: fmt::Arguments<'_>) {
        debug_assert_eq!(exception_number(), 0, "the log ring is written from thread mode only");
        let mut msg = FixedBuf::<127> { buf: [0; 127], len: 0 };
        let _ = msg.write_fmt(args);
        let need = 1 + msg.len;
        while LOG.try_charge(need).is_err() {
            if !self.evict_oldest() {
                return; // larger than the whole limit: dropped
            }
        }
        let tail = self.tail.load(Ordering::Relaxed);
        self.put(tail, msg.len as u8);
        for (i, &b) in msg.buf[..msg.len].iter().enumerate() {
            self.put(tail + 1 + i, b);
        }
        self.tail.store(tail + need, Ordering::Relaxed);
    }

    fn put(&self, at: usize, b: u8) {
        self.bytes[at % LOG_CAPACITY].store(b, Ordering::Relaxed);
    }

    fn get(&self, at: usize) -> u8 {
        self.bytes[at % LOG_CAPACITY].load(Ordering::Relaxed)
    }

    fn evict_oldest(&self) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Relaxed) {
            return false;
        }
        let size = 1 + usize::from(self.get(head));
        self.head.store(head + size, Ordering::Relaxed);
        LOG.uncharge(size);
        self.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Evicts until at most `bytes` are held, then lowers LOG's limit to `bytes`.
    fn shrink(&self, bytes: usize) -> Result<(), LimitError> {
        while LOG.usage() > bytes && self.evict_oldest() {}
        LOG.set_max(bytes)
    }

    /// Calls `f` with each message still in the ring, oldest first.
    fn for_each(&self, mut f: impl FnMut(&[u8])) {
        let (mut at, tail) = (self.head.load(Ordering::Relaxed), self.tail.load(Ordering::Relaxed));
        while at < tail {
            let len = usize::from(self.get(at));
            let mut buf = [0u8; 127];
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = self.get(at + 1 + i);
            }
            f(&buf[..len]);
            at += 1 + len;
        }
    }

    fn clear(&self) {
        while self.evict_oldest() {}
    }
}

macro_rules! log {
    ($($arg:tt)*) => { LOG_RING.log(format_args!($($arg)*)) };
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// Whether the link partner was asked to pause (IEEE 802.3x flow control): the receive path
/// does it when the packet pools pass NET's `high`, long before `max` drops packets.
static PAUSED: AtomicBool = AtomicBool::new(false);
static PAUSE_FRAMES: AtomicUsize = AtomicUsize::new(0);

/// Packet size on the wire buffers.
const PACKET: usize = 1536;
const TRANSFER: usize = 4 * KIB;

/// The Ethernet receive interrupt: takes a buffer for the packet or drops it.
fn eth_rx_isr(rx: &mut [Option<Lease>; 16], dropped: &mut usize) {
    match RX_POOL.alloc(PACKET) {
        Ok(lease) => {
            assert!(store(rx, lease), "NET_RX's limit admits 10 packets, the ring has 16 slots");
        }
        Err(_) => *dropped += 1, // no buffer: the packet is dropped, the peer retransmits
    }
    if NET.usage() > NET.high() && !PAUSED.swap(true, Ordering::Relaxed) {
        PAUSE_FRAMES.fetch_add(1, Ordering::Relaxed); // (the driver would queue the frame here)
    }
}

fn report(out: &mut impl fmt::Write) -> fmt::Result {
    // A consistent picture: drain the thread-mode budgets and read every counter with
    // interrupts masked, so that no receive interrupt changes a number halfway.
    let rows = interrupt_free(|| {
        TX_BUDGET.drain();
        RX_BUDGET.drain();
        COUNTERS.map(|(name, c)| (name, c.depth(), c.usage(), c.max(), c.high(), c.peak(), c.failcnt()))
    });
    writeln!(
        out,
        "   {:<10} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "pool", "usage", "max", "high", "peak", "failcnt"
    )?;
    for (name, depth, usage, max, high, peak, failcnt) in rows {
        writeln!(
            out,
            "   {:<10} {:>7} {:>7} {:>7} {:>7} {:>8}",
            Indented(depth, name),
            Amount(usage),
            Amount(max),
            Amount(high),
            Amount(peak),
            failcnt
        )?;
    }
    Ok(())
}

/// Formats bytes as `12.5K` (`-` for no limit).
struct Amount(usize);

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = FixedBuf::<16> { buf: [0; 16], len: 0 };
        match self.0 {
            chargetree::COUNTER_MAX => buf.write_str("-")?,
            0 => buf.write_str("0")?,
            b if b % KIB == 0 => write!(buf, "{}K", b / KIB)?,
            b => write!(buf, "{}.{}K", b / KIB, b % KIB * 10 / KIB)?,
        }
        f.pad(core::str::from_utf8(&buf.buf[..buf.len]).unwrap_or("?"))
    }
}

struct Indented(usize, &'static str);

impl fmt::Display for Indented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = FixedBuf::<32> { buf: [0; 32], len: 0 };
        for _ in 0..self.0 {
            buf.write_str("  ")?;
        }
        buf.write_str(self.1)?;
        f.pad(core::str::from_utf8(&buf.buf[..buf.len]).unwrap_or("?"))
    }
}

/// The firmware: boot, a DMA burst, a receive burst in the interrupt handler, transmission
/// from thread mode, SRAM pressure, a telemetry snapshot, and shutdown with every counter
/// back at zero. Narrated into `out`; every step is checked.
fn firmware_main(out: &mut impl fmt::Write) -> fmt::Result {
    // Boot: the limits.
    SRAM.set_max(32 * KIB).expect("nothing charged yet");
    DMA.set_max(16 * KIB).expect("nothing charged yet");
    NET.set_max(24 * KIB).expect("nothing charged yet");
    NET.set_high(12 * KIB).expect("representable");
    NET_RX.set_max(16 * KIB).expect("nothing charged yet");
    NET_TX.set_max(12 * KIB).expect("nothing charged yet");
    LOG.set_max(LOG_CAPACITY).expect("nothing charged yet");
    log!("boot: sram 32K, dma 16K, net 24K (high 12K), log 2K");
    writeln!(out, "boot: limits set on the static counters\n")?;

    // 1. Sensor DMA: 4 KiB transfers; the fifth is refused by DMA and deferred.
    let mut dma: [Option<Lease>; 8] = [const { None }; 8];
    let mut deferred = 0;
    for i in 0..5 {
        match DMA_POOL.alloc(TRANSFER) {
            Ok(lease) => {
                store(&mut dma, lease);
            }
            Err(ChargeError::Limit { at, level }) => {
                writeln!(
                    out,
                    "1. DMA transfer {i}: refused by {} (level {level}: its own limit): deferred",
                    name_of(at)
                )?;
                log!("dma: transfer {i} deferred ({} full)", name_of(at));
                assert!(ptr::eq(at, &DMA) && level == 0);
                deferred += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((held(&dma), deferred, DMA.usage(), DMA.failcnt()), (4, 1, 16 * KIB, 1));
    dma[0] = None; // transfer 0 completes: its buffer is released...
    store(&mut dma, DMA_POOL.alloc(TRANSFER).expect("room after a completion")); // ...and the deferred one starts
    writeln!(out, "   transfer 0 completed, the deferred transfer started; {} in flight", held(&dma))?;

    // 2. A receive burst: 12 packets arrive in the Ethernet interrupt. Handlers get no CPU
    //    from the provider, so they charge NET_RX directly; 10 fit, 2 are dropped.
    let mut rx: [Option<Lease>; 16] = [const { None }; 16];
    let mut dropped = 0;
    for _ in 0..12 {
        simulate_irq(16 + 61, || eth_rx_isr(&mut rx, &mut dropped)); // ETH IRQ 61
    }
    writeln!(
        out,
        "2. RX burst in the interrupt handler: {} packets buffered, {dropped} dropped (net-rx full), pause frame sent: {}",
        held(&rx),
        PAUSED.load(Ordering::Relaxed)
    )?;
    assert_eq!((held(&rx), dropped, NET_RX.failcnt()), (10, 2, 2));
    assert_eq!(RX_BUDGET.hits.load(Ordering::Relaxed), 0, "handlers bypass the per-CPU budget");
    assert!(PAUSED.load(Ordering::Relaxed), "15K in NET is over its 12K high");
    log!("net: rx burst, {dropped} dropped, pause sent");
    // Thread mode processes the packets: their buffers go back through CPU 0's RX budget.
    for slot in &mut rx {
        *slot = None;
    }
    let cached = RX_BUDGET.cached();
    writeln!(out, "   thread mode processed them; {} stay pre-charged in CPU 0's RX budget", Amount(cached))?;
    assert!(cached > 0 && cached <= 4 * KIB, "the slot keeps up to twice the batch");
    assert_eq!(NET_RX.usage(), cached, "the rest went back to the counters");
    if NET.usage() <= NET.high() {
        PAUSED.store(false, Ordering::Relaxed);
    }

    // 3. Transmission from thread mode: 512-byte frames through CPU 0's TX budget. One walk
    //    charges a frame and a 2 KiB batch; the next four frames touch no shared counter.
    let mut tx: [Option<Lease>; 24] = [const { None }; 24];
    for _ in 0..20 {
        let lease = TX_POOL.alloc(512).expect("net-tx has room");
        store(&mut tx, lease);
    }
    let (hits, walks) = (TX_BUDGET.hits.load(Ordering::Relaxed), TX_BUDGET.walks.load(Ordering::Relaxed));
    writeln!(out, "3. TX: 20 frames from thread mode: {hits} from CPU 0's budget, {walks} counter walks")?;
    assert_eq!((hits, walks), (16, 4));
    for slot in &mut tx {
        *slot = None; // sent
    }

    // 4. SRAM pressure: DMA holds 16K, the log ring its messages, the budgets what they
    //    pre-charged; a burst of 8 TX buffers takes the pools past SRAM's 32K. SRAM's refusal
    //    (two levels up from NET_TX) makes the firmware take memory back where it hurts least,
    //    the budgets' unused bytes and the log ring, and retry.
    for i in 0..60 {
        log!("sensor: sample {i} filtered, value {}", 1000 + i * 7);
    }
    writeln!(
        out,
        "4. SRAM pressure: {} in use (dma {}, log {}, pre-charged in budgets {})",
        Amount(SRAM.usage()),
        Amount(DMA.usage()),
        Amount(LOG.usage()),
        Amount(TX_BUDGET.cached() + RX_BUDGET.cached())
    )?;
    let mut burst: [Option<Lease>; 8] = [const { None }; 8];
    let mut relieved = 0;
    for i in 0..8 {
        let lease = match TX_POOL.alloc(PACKET) {
            Ok(lease) => lease,
            Err(ChargeError::Limit { at, level }) if ptr::eq(at, &SRAM) => {
                assert_eq!(level, 2, "NET_TX -> NET -> SRAM");
                let log_before = LOG.usage();
                let drained = interrupt_free(|| RX_BUDGET.drain() + TX_BUDGET.drain());
                LOG_RING.shrink(512).expect("evicted below the new limit");
                relieved += drained + log_before - LOG.usage();
                writeln!(
                    out,
                    "   TX buffer {i} refused by {} ({level} levels up): drained {} of budgets, \
                     shrank the log ring to {}",
                    name_of(at),
                    Amount(drained),
                    Amount(LOG.usage())
                )?;
                TX_POOL.alloc(PACKET).expect("fits once SRAM has room again")
            }
            Err(e) => panic!("{e}"),
        };
        store(&mut burst, lease);
    }
    assert!(relieved > PACKET, "the burst needed the budgets' and the log ring's memory");
    assert_eq!(SRAM.failcnt(), 1, "SRAM refused once");
    let evicted = LOG_RING.evicted.load(Ordering::Relaxed);
    writeln!(out, "   all 8 TX buffers in flight; {evicted} log messages evicted in all\n")?;
    log!("net: tx burst done; log ring shrunk to 512");

    // 5. Telemetry: a consistent snapshot (interrupts masked).
    writeln!(out, "5. telemetry snapshot (budgets drained, interrupts masked):")?;
    report(out)?;
    assert!(SRAM.peak() <= 32 * KIB && NET.peak() <= 24 * KIB, "no limit was ever exceeded");

    // 6. Shutdown: every transfer and buffer is released, the budgets drained, the log ring
    //    cleared: every counter is back at zero.
    drop((dma, burst));
    TX_BUDGET.drain();
    RX_BUDGET.drain();
    writeln!(out, "\n6. shutdown: the last log messages in the ring:")?;
    let mut shown = 0;
    LOG_RING.for_each(|m| {
        shown += 1;
        let _ = writeln!(out, "   | {}", core::str::from_utf8(m).unwrap_or("?"));
    });
    assert!(shown > 0 && LOG.usage() <= 512);
    LOG_RING.clear();
    for (name, c) in COUNTERS {
        assert_eq!(c.usage(), 0, "{name}: every charge was returned");
    }
    writeln!(out, "   every counter is back at 0")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Entry points.

/// Standard output, on the host.
#[cfg(not(target_os = "none"))]
struct Stdout;

#[cfg(not(target_os = "none"))]
impl fmt::Write for Stdout {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print!("{s}");
        Ok(())
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    firmware_main(&mut Stdout).expect("stdout");
}

/// On the board the narration goes nowhere (a real one would go to a UART or RTT).
#[cfg(target_os = "none")]
struct Discard;

#[cfg(target_os = "none")]
impl fmt::Write for Discard {
    fn write_str(&mut self, _: &str) -> fmt::Result {
        Ok(())
    }
}

/// The ELF entry point: runs the scenario, then sleeps. (A board support crate's reset
/// handler would set up RAM and call `firmware_main`; this symbol lets the example link with
/// the linker's default layout.)
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "C" fn _start() -> ! {
    let _ = firmware_main(&mut Discard);
    loop {
        core::hint::spin_loop();
    }
}

/// A panic (a failed check) stops the firmware where a debugger can see it.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
