"""The RabbitMQ side: the broker objects and the only module that speaks AMQP."""
