{# Predictions per day and selected model, with the decisions taken. #}
{{ config(
    incremental_strategy='merge',
    unique_key=['prediction_day', 'selected_model'],
    partition_by={'field': 'prediction_day', 'data_type': 'date', 'granularity': 'day'}
) }}
{%- set days = changed_days(ref('stg_predictions'), 'prediction_at', 'refreshed_at', 'refreshed_at') %}

select
    date(prediction_at) as prediction_day,
    coalesce(selected_model, 'unknown') as selected_model,
    count(*) as predictions,
    countif(business_decision = 'approve') as approved,
    countif(business_decision = 'review') as reviewed,
    countif(business_decision = 'decline') as declined,
    current_timestamp() as refreshed_at
from {{ ref('stg_predictions') }}
where {{ in_days('prediction_at', days) }}
group by 1, 2
