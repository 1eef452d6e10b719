//! Timeouts of the data path (`timeout http-request`, `timeout server`):
//! armed on every request and almost never fired.
//!
//! tokio's timer wakes its driver with a system call whenever a new timer is
//! due before the driver's next wake-up, which a request's timeout often is:
//! one `write` to an eventfd and one more `epoll_wait` per request. Here
//! arming or cancelling a timeout only touches an ordered map; one tokio
//! sleep, set to the earliest deadline, wakes the waiting futures, and it is
//! moved only when a new deadline comes before it. Timeouts of the same
//! length are armed in deadline order, so that is rare.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A registered deadline: its ticks, and a sequence number.
type Key = (u64, u64);

/// The timeouts of one running configuration.
pub struct Timers {
    inner: Mutex<Inner>,
    /// The origin of [`Timers::fired`].
    base: Instant,
    /// The latest deadline fired so far, in nanoseconds after `base` plus
    /// one (0: none). Every registered deadline up to it is due, so a sleep
    /// learns without the lock whether its own has fired.
    fired: AtomicU64,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            inner: Mutex::default(),
            base: Instant::now(),
            fired: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// By deadline (as [`Timers::ticks`]: one integer compares faster
    /// than an `Instant`), then order of registration.
    waiting: BTreeMap<Key, Waker>,
    next_id: u64,
    /// Whether the driver task runs.
    started: bool,
    /// The deadline the driver sleeps until.
    armed: Option<u64>,
    driver: Option<Waker>,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers")
            .field("waiting", &self.inner.lock().waiting.len())
            .finish()
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        // Let the driver see that it has nothing left to serve.
        if let Some(w) = self.inner.get_mut().driver.take() {
            w.wake();
        }
    }
}

/// Returned by [`Timers::timeout`] when the deadline passed first.
#[derive(Debug)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A future run for at most a given time ([`Timers::timeout`]).
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: Option<Sleep>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.fut.poll(cx) {
            return Poll::Ready(Ok(r));
        }
        match this.sleep {
            Some(sleep) => Pin::new(sleep).poll(cx).map(|()| Err(Elapsed)),
            None => Poll::Pending,
        }
    }
}

impl Timers {
    /// A future that is ready at `deadline`.
    pub fn sleep_until(self: &Arc<Self>, deadline: Instant) -> Sleep {
        Sleep {
            timers: Arc::clone(self),
            deadline,
            registered: None,
        }
    }

    /// Runs `fut` for at most `limit`. (A future that is large and should
    /// not move can be passed pinned: `timeout(t, pin!(fut))`.)
    pub fn timeout<F: Future>(self: &Arc<Self>, limit: Duration, fut: F) -> Timeout<F> {
        self.timeout_opt(Some(limit), fut)
    }

    /// Like [`timeout`](Self::timeout), with no limit when `limit` is
    /// `None`.
    pub fn timeout_opt<F: Future>(self: &Arc<Self>, limit: Option<Duration>, fut: F) -> Timeout<F> {
        Timeout {
            fut,
            sleep: limit.map(|l| self.sleep_until(Instant::now() + l)),
        }
    }

    /// Registers `w` for `deadline` and returns its key. Wakes or starts
    /// the driver when it has to wake up sooner than it would.
    fn register(self: &Arc<Self>, deadline: Instant, w: &Waker) -> Key {
        let deadline = self.ticks(deadline);
        let mut inner = self.inner.lock();
        let k = (deadline, inner.next_id);
        inner.next_id += 1;
        inner.waiting.insert(k, w.clone());
        if !inner.started {
            inner.started = true;
            drop(inner);
            tokio::spawn(drive(Arc::downgrade(self)));
            return k;
        }
        if inner.armed.is_none_or(|a| deadline < a)
            && let Some(d) = inner.driver.take()
        {
            drop(inner);
            d.wake();
        }
        k
    }

    /// Gives the deadline under `key` a new waker; false when it has fired.
    fn rewake(&self, key: &Key, w: &Waker) -> bool {
        match self.inner.lock().waiting.get_mut(key) {
            Some(old) => {
                old.clone_from(w);
                true
            }
            None => false,
        }
    }

    fn cancel(&self, key: &Key) {
        self.inner.lock().waiting.remove(key);
    }

    /// A point in time as nanoseconds after `base`, plus one (times
    /// before `base` are all 1).
    fn ticks(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64 + 1
    }

    fn instant(&self, ticks: u64) -> Instant {
        self.base + Duration::from_nanos(ticks.saturating_sub(1))
    }

    /// Whether a registered deadline has fired or is about to.
    fn has_fired(&self, ticks: u64) -> bool {
        ticks <= self.fired.load(Ordering::Acquire)
    }
}

/// A deadline of [`Timers`]; usable as hyper's timer.
///
/// Moving the deadline later leaves the registration in place: when the
/// registered deadline fires, the sleep registers again for its real one.
/// Polled again by the same task, a registered sleep takes no lock and
/// reads no clock.
pub struct Sleep {
    timers: Arc<Timers>,
    deadline: Instant,
    /// The registered deadline and the waker it wakes.
    registered: Option<(Key, Waker)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some((key, waker)) = &mut this.registered {
            if !this.timers.has_fired(key.0) {
                if waker.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
                if this.timers.rewake(key, cx.waker()) {
                    waker.clone_from(cx.waker());
                    return Poll::Pending;
                }
                // Fired meanwhile.
            } else {
                // Due; the driver may not have taken it out yet.
                this.timers.cancel(key);
            }
            let at = key.0;
            this.registered = None;
            if this.timers.ticks(this.deadline) <= at {
                return Poll::Ready(());
            }
        }
        // Not registered, or registered earlier than the deadline now is. No
        // clock is read: a deadline already past fires at the driver's next
        // turn.
        let key = this.timers.register(this.deadline, cx.waker());
        this.registered = Some((key, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((k, _)) = self.registered.take() {
            self.timers.cancel(&k);
        }
    }
}

impl Sleep {
    /// Moves the deadline, keeping the allocation, and the registration
    /// when the deadline moves later.
    fn reset(&mut self, deadline: Instant) {
        if let Some((k, _)) = &self.registered
            && self.timers.ticks(deadline) < k.0
        {
            self.timers.cancel(k);
            self.registered = None;
        }
        self.deadline = deadline;
    }
}

impl hyper::rt::Sleep for Sleep {}

/// The task that wakes the futures whose deadline passed.
async fn drive(timers: Weak<Timers>) {
    let mut sleep = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
    // The deadline of the sleep that just ended: what it woke for is due
    // even if the clock reads a hair earlier.
    let mut fired: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        loop {
            let Some(t) = timers.upgrade() else {
                return Poll::Ready(());
            };
            let now = match fired.take() {
                Some(f) => Instant::now().max(f),
                None => Instant::now(),
            };
            let now = t.ticks(now);
            let mut due = Vec::new();
            let mut inner = t.inner.lock();
            while let Some(e) = inner.waiting.first_entry() {
                if e.key().0 > now {
                    break;
                }
                t.fired.fetch_max(e.key().0, Ordering::Release);
                due.push(e.remove());
            }
            let next = inner.waiting.first_key_value().map(|(k, _)| k.0);
            let rearm = next.is_some() && next != inner.armed;
            inner.armed = next;
            inner.driver = Some(cx.waker().clone());
            drop(inner);
            let next = next.map(|n| t.instant(n));
            drop(t);
            for w in due {
                w.wake();
            }
            let Some(next) = next else {
                return Poll::Pending;
            };
            if rearm {
                sleep.as_mut().reset(next.into());
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            fired = Some(sleep.deadline().into_std());
        }
    })
    .await
}

/// hyper's timer over [`Timers`].
#[derive(Clone, Debug)]
pub struct HyperTimer(pub Arc<Timers>);

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(deadline))
    }

    /// hyper re-arms a header-read timeout it kept.
    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(s) => s.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_fire_in_order_and_cancelled_ones_never() {
        let t = Arc::new(Timers::default());
        let start = Instant::now();
        let long = t.timeout(Duration::from_millis(80), std::future::pending::<()>());
        let short = t.timeout(Duration::from_millis(20), std::future::pending::<()>());
        let done = t.timeout(Duration::from_secs(5), async { 7 });
        let dropped = t.sleep_until(start + Duration::from_millis(5));
        drop(dropped);
        assert_eq!(done.await.ok(), Some(7));
        let (a, b) = tokio::join!(long, short);
        assert!(a.is_err() && b.is_err());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
        assert!(t.inner.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_reset_sleep_waits_for_its_new_deadline() {
        use hyper::rt::Timer;
        let t = Arc::new(Timers::default());
        let timer = HyperTimer(Arc::clone(&t));
        let start = Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(30));
        // Registered once (polled), then moved nearer.
        assert!(futures_poll_once(sleep.as_mut()).await.is_pending());
        timer.reset(&mut sleep, start + Duration::from_millis(40));
        assert!(t.inner.lock().waiting.is_empty());
        sleep.await;
        assert!(start.elapsed() >= Duration::from_millis(40));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_sleep_moved_later_keeps_its_registration_and_waits_for_the_new_deadline() {
        use hyper::rt::Timer;
        let t = Arc::new(Timers::default());
        let timer = HyperTimer(Arc::clone(&t));
        let start = Instant::now();
        let mut sleep = timer.sleep(Duration::from_millis(20));
        assert!(futures_poll_once(sleep.as_mut()).await.is_pending());
        timer.reset(&mut sleep, start + Duration::from_millis(80));
        // Moving later touches nothing shared.
        assert_eq!(t.inner.lock().waiting.len(), 1);
        sleep.as_mut().await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(t.inner.lock().waiting.is_empty());
    }

    async fn futures_poll_once<F: Future + ?Sized>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }

    #[tokio::test]
    async fn an_earlier_deadline_moves_the_driver() {
        let t = Arc::new(Timers::default());
        // The driver first sleeps until the far deadline...
        let far = tokio::spawn({
            let t = Arc::clone(&t);
            async move {
                t.timeout(Duration::from_secs(30), std::future::pending::<()>())
                    .await
            }
        });
        tokio::task::yield_now().await;
        // ...and a nearer one must still fire on time.
        let start = Instant::now();
        let near = t
            .timeout(Duration::from_millis(30), std::future::pending::<()>())
            .await;
        assert!(near.is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
        far.abort();
    }
}
