mod queue;
mod queue_exclusive;
mod registry;
