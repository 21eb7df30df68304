-- SIM cards of Salesforce SIM_Inventory__c taken by orders (workers/fulfillment, step sim_assign).
--
-- Salesforce holds the inventory; this table is the arbiter that makes a reservation atomic. The
-- assignment is written back to Salesforce through the sf-writer, so for a few hundred
-- milliseconds a taken card still reads Available there; two orders that read the same free card
-- both try to insert it here and only one row wins (the primary key). An order holds at most one
-- card (the unique order id), and a retried order finds its own row first, so it keeps its card.
-- No foreign key to fulfillment_orders: the card stays taken in our books even if an order's saga
-- rows were ever purged, as it stays assigned in Salesforce.
CREATE TABLE IF NOT EXISTS sim_card_assignments (
    card_id        varchar(18) PRIMARY KEY,   -- SIM_Inventory__c.Id
    sf_order_id    varchar(18) NOT NULL UNIQUE,
    card_name      text        NOT NULL,      -- SIM_Inventory__c.Name, for people
    phone_number   text        NOT NULL,      -- Phone_Number__c: the Freebit account
    serial_number  text,                      -- Serial_Number__c: the physical card's product number
    assigned_at    timestamptz NOT NULL DEFAULT now()
);
