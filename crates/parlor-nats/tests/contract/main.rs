mod queue;
mod registry;
