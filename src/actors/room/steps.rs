//! The room's store-step queue. A room's store writes (joins, leaves, chat
//! batches, member resyncs) are steps, run one at a time in the order they
//! were queued, while the actor keeps handling its mailbox.
//!
//! Why not `ctx.wait`: it would stop the actor from handling anything while a
//! write is in flight, including the step's own completion on a MySQL
//! transaction that holds the room row lock, and it would freeze the room
//! for every reader. Why not run writes concurrently: a leave must be
//! recorded before a later join of the same nickname, and the member list,
//! the count and a `joined` snapshot must never disagree. So the store sees
//! this room's writes from this process strictly in order.
//!
//! A step is built only when its turn comes, so it sees the state the steps
//! before it left.

use std::collections::VecDeque;

use actix::fut::LocalBoxActorFuture;
use actix::prelude::*;

/// One store write, built when its turn comes.
pub type Step<A> = Box<dyn FnOnce(&mut A, &mut Context<A>) -> StepFuture<A>>;
/// A running store write.
pub type StepFuture<A> = LocalBoxActorFuture<A, ()>;

/// An actor with a step queue.
pub trait HasSteps: Actor<Context = Context<Self>> {
    fn steps(&mut self) -> &mut StepQueue<Self>;

    /// Called each time the queue runs dry.
    fn steps_done(&mut self, ctx: &mut Context<Self>);
}

/// Steps waiting their turn, and whether one is running.
pub struct StepQueue<A: Actor<Context = Context<A>>> {
    waiting: VecDeque<Step<A>>,
    running: bool,
}

impl<A: Actor<Context = Context<A>>> Default for StepQueue<A> {
    fn default() -> Self {
        StepQueue {
            waiting: VecDeque::new(),
            running: false,
        }
    }
}

impl<A: HasSteps> StepQueue<A> {
    /// Nothing queued and nothing running.
    pub fn is_idle(&self) -> bool {
        !self.running && self.waiting.is_empty()
    }

    /// Queues `step` behind the ones waiting; starts it if none runs.
    pub fn enqueue(act: &mut A, step: Step<A>, ctx: &mut Context<A>) {
        act.steps().waiting.push_back(step);
        Self::run_next(act, ctx);
    }

    fn run_next(act: &mut A, ctx: &mut Context<A>) {
        let queue = act.steps();
        if queue.running {
            return;
        }
        let Some(step) = queue.waiting.pop_front() else {
            act.steps_done(ctx);
            return;
        };
        queue.running = true;
        let fut = step(act, ctx);
        ctx.spawn(fut.map(|(), act: &mut A, ctx| {
            act.steps().running = false;
            Self::run_next(act, ctx);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Records when each step starts and ends.
    #[derive(Default)]
    struct Recorder {
        steps: StepQueue<Recorder>,
        log: Vec<String>,
        dry: usize,
    }

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl HasSteps for Recorder {
        fn steps(&mut self) -> &mut StepQueue<Self> {
            &mut self.steps
        }

        fn steps_done(&mut self, _: &mut Context<Self>) {
            self.dry += 1;
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Queue(&'static str, u64);

    impl Handler<Queue> for Recorder {
        type Result = ();

        fn handle(&mut self, Queue(name, ms): Queue, ctx: &mut Context<Self>) {
            let step: Step<Recorder> = Box::new(move |act: &mut Recorder, _| {
                act.log.push(format!("start {name}"));
                Box::pin(
                    tokio::time::sleep(Duration::from_millis(ms))
                        .into_actor(act)
                        .map(move |(), act, _| act.log.push(format!("end {name}"))),
                )
            });
            StepQueue::enqueue(self, step, ctx);
        }
    }

    #[derive(Message)]
    #[rtype(result = "(Vec<String>, usize, bool)")]
    struct Report;

    impl Handler<Report> for Recorder {
        type Result = MessageResult<Report>;

        fn handle(&mut self, _: Report, _: &mut Context<Self>) -> Self::Result {
            MessageResult((self.log.clone(), self.dry, self.steps.is_idle()))
        }
    }

    #[actix_rt::test]
    async fn steps_run_one_at_a_time_in_the_order_queued() {
        let addr = Recorder::default().start();
        // The slow step first: a later, faster step must still wait for it.
        addr.do_send(Queue("a", 60));
        addr.do_send(Queue("b", 1));
        addr.do_send(Queue("c", 20));
        let (log, _, idle) = addr.send(Report).await.unwrap();
        assert_eq!(log, ["start a"], "b and c wait while a runs");
        assert!(!idle);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (log, dry, idle) = addr.send(Report).await.unwrap();
        assert_eq!(
            log,
            ["start a", "end a", "start b", "end b", "start c", "end c"]
        );
        assert_eq!(dry, 1, "the queue ran dry once, after c");
        assert!(idle);
    }
}
