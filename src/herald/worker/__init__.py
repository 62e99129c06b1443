"""The durable work engine: claim due jobs, run them on asyncio, record outcomes, retry."""
