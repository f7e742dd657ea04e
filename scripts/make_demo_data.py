"""Regenerate adaptune's bundled demo datasets (stdlib only, deterministic).

Every template and slot value below was written by hand for adaptune; nothing
is taken from an existing corpus.  Run from anywhere:

    python scripts/make_demo_data.py

It rewrites ``intents/{train,dev,test}.jsonl``, ``ner/{train,dev,test}.conll``
and ``README.md`` next to this file.  The output depends only on ``SEED``.

Templates are assigned to exactly one split, so no sentence pattern is shared
between train, dev and test.  Template syntax: ``[a|b|]`` picks one option
(possibly empty) and ``{slot}`` is filled from the slot pools.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

SEED = 20240517
HERE = Path(__file__).resolve().parents[1] / "src" / "adaptune" / "resources" / "data"
SPLITS = ("train", "dev", "test")

# --------------------------------------------------------------------------
# Intent classification
# --------------------------------------------------------------------------

LABELS = (
    "order_status",
    "refund_request",
    "cancel_order",
    "change_address",
    "payment_issue",
    "product_question",
    "shipping_cost",
    "account_login",
    "complaint",
    "greeting",
)

LABEL_DESCRIPTIONS = {
    "order_status": "where an order/parcel is, tracking, delivery date",
    "refund_request": "wants money back, return-for-refund, refund progress",
    "cancel_order": "wants to cancel (part of) an order, how to cancel",
    "change_address": "change/correct the delivery address or destination",
    "payment_issue": "payment failed, double charge, unknown charge, checkout errors",
    "product_question": "specs, sizes, materials, warranty, stock of a product",
    "shipping_cost": "delivery fees, free-shipping thresholds, express surcharges",
    "account_login": "cannot log in, passwords, verification codes, locked accounts",
    "complaint": "dissatisfaction with service/staff/quality without a concrete request",
    "greeting": "hello/goodbye/thanks and other pleasantries with no task",
}

INTENT_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "order_status": {
        "en": [
            "Where is my order {order}? It's been {days} already.",
            "[Hi,|Hey,|] can you check the status of order {order}?",
            "My {product} was supposed to arrive [yesterday|on Monday|last week] and it's still not here.",
            "Tracking for {order} hasn't updated since [Tuesday|the weekend|three days ago]. Is it lost?",
            "has my [package|parcel] shipped yet or is it still sitting in your warehouse",
            "When will the {product} I bought [get delivered|show up|arrive]?",
            "The {courier} page has said 'in transit' for {days}. What's going on with {order}?",
            "Any update on my delivery? [Order number is|The order no. is|It's] {order}.",
            "I ordered my {product} {days} ago and [never got|haven't received] a shipping confirmation.",
            "Could you tell me the estimated delivery date for {order}?",
            "is {order} out for delivery [today|yet]?",
            "I need the {product} before [Friday|the weekend|my trip]. Will it reach {city} in time?",
            "Tracking shows delivered but I can't find the [parcel|box] anywhere. Where did it [go|end up]?",
            "Can I get a tracking number for my [last|most recent] purchase?",
            "Still waiting on {order}... any ETA?",
            "My 快递 for {order} hasn't moved in {days}, where is it?",
            "I placed an order on [the 3rd|Monday|the 12th] and the app still shows 'processing'. Is that normal?",
            "Did {courier} pick up my {product} yet? Nothing on the tracking page.",
            "How many more days until {order} gets here? I'm in {city}.",
            "The delivery window for my {product} passed yesterday. Where is it now?",
        ],
        "zh": [
            "我的订单{order}到哪了？",
            "请问{order}什么时候[发货|能发出]？",
            "买的{product}[已经|都]{days}了还没到，帮我查一下物流。",
            "物流信息{days}没更新了，是不是丢件了？",
            "快递显示已签收，但我根本没[收到|见到]啊",
            "{courier}的单号查不到信息，订单{order}[发出去了吗|到底发了没有]？",
            "能帮我看看我的[包裹|快递|货]现在[在哪里|到哪儿了]吗",
            "我下单的{product}大概几号能送到{city}？",
            "在嘛，订单{order}怎么还是待发货状态",
            "想问下我的货发了没有，[下周|周末|明天]要用",
            "预计什么时候能到？订单号{order}",
            "麻烦查一下我[昨天|前天|上周]买的{product}的物流进度",
            "为什么我的订单一直显示运输中？[都{days}了|]",
            "我的order {order}一直没有tracking信息，帮忙看下",
            "请问{order}的ETA是什么时候？",
            "快递到{city}了吗？我的单号是{order}",
            "{order}显示已出库{days}了，怎么还没有派送？",
            "我的{product}现在到哪个城市了？",
            "订单{order}一直在{city}中转站不动，怎么回事",
            "[东西|包裹|快递]什么时候能到啊，[等好久了|都等了{days}了]",
        ],
    },
    "refund_request": {
        "en": [
            "I'd like a refund for order {order}[, please|].",
            "The {product} arrived broken. Can I get my money back?",
            "I returned the {product} {days} ago and still haven't been reimbursed.",
            "How long does it take for the {amount} to go back to my {pay}?",
            "Please give me back the {amount} for the {product}, I already sent it back.",
            "I want to return this {product} and get a full refund.",
            "The item doesn't match the description at all. I want my {amount} back.",
            "Can you credit my {pay} for the missing item in {order}?",
            "What's the status of my refund for {order}?",
            "the {product} stopped working after two days, i want a refund not a replacement",
            "Is a partial refund possible? The {product} has a [scratch|dent|stain] on it.",
            "Your email said the money would be back in 5 business days. It's been {days}. Where is it?",
            "I never even opened the {product}, can I send it back and get reimbursed?",
            "Got the wrong [size|colour|model] and the exchange is out of stock, "
            "so I'd rather have the money returned.",
            "Please reverse the payment for {order}, the [item|goods] came damaged.",
            "The 退款 for {order} still hasn't shown up, can you check?",
            "Money for the {product} I sent back hasn't appeared on my {pay} yet.",
            "I'd like to be reimbursed for {order}; the box arrived empty.",
            "You promised {amount} back as compensation for the late delivery. Still waiting.",
            "Can I return the {product} I got as a gift and have the money sent to my {pay}?",
        ],
        "zh": [
            "我要申请退款，订单号{order}",
            "收到的{product}是坏的，能退钱吗？",
            "退货已经寄回去{days}了，钱什么时候退给我？",
            "这个{product}跟描述不符，我要退货退款",
            "{amount}什么时候能退回我的{pay}？",
            "东西还没用过，能[七天无理由|无理由]退吗？",
            "[衣服|鞋子]尺码不对，不想换了，直接把钱退给我吧",
            "少发了一件，差价{amount}请退给我",
            "我的退款一直显示[处理中|审核中]，到底什么时候[到账|能退回来]？",
            "质量太差了，[一用就坏|用了两次就坏了|开机就死机]，把钱还给我",
            "能不能部分退款？{product}有[划痕|污渍|磕碰]",
            "申请了仅退款，[商家|你们]一直不处理",
            "订单{order}取消以后钱退到哪里了？",
            "我想要refund，{product}收到就是坏的",
            "退款status怎么查？订单{order}",
            "已经退货了，{courier}显示商家签收了，钱呢？",
            "退回去的{product}你们已经签收了，{amount}什么时候打回来？",
            "说好的补偿{amount}还没到账",
            "这件{wear}洗了一次就缩水，能退款吗？",
            "订单{order}的钱能原路退回吗？",
        ],
    },
    "cancel_order": {
        "en": [
            "Please cancel order {order}.",
            "I ordered the wrong {product} by mistake, can you cancel it before it ships?",
            "How do I cancel an order I placed [an hour ago|this morning|last night]?",
            "I changed my mind about the {product}. Cancel it please.",
            "Is it too late to cancel {order}?",
            "Accidentally placed the same order twice, please drop one of them: {order}.",
            "Cancel my purchase, I found it cheaper [elsewhere|at another store].",
            "I don't need the {product} anymore, please stop the order.",
            "Where is the cancel button? I can't find it [on the order page|in the app|anywhere on the website].",
            "can u cancel {order} pls, ordered the wrong [color|colour|size]",
            "I want to call off the whole order {order}, nothing has shipped yet.",
            "Please void my order from [today|yesterday], the delivery date is too late for me.",
            "Can I cancel just one item from {order} and keep the rest?",
            "It hasn't been [dispatched|shipped|packed] [yet|], so please don't send it. I'm cancelling.",
            "Please 取消 my order {order}, I placed it by accident.",
            "Stop order {order} please, my [boss|partner|sister] already bought one.",
            "I'd like to withdraw my order for the {product}, it's no longer needed.",
            "If I cancel {order} now, do I get charged anything?",
            "Just placed {order} but want a different {product} instead. Can you cancel the first one?",
        ],
        "zh": [
            "帮我取消订单{order}",
            "不小心[下错单了|多拍了一件|拍错型号了]，还没发货能取消吗？",
            "{product}不想要了，请把订单撤销",
            "怎么取消订单？[找不到按钮|页面上没看到入口]",
            "重复下单了，麻烦取消其中一个：{order}",
            "订单{order}还能取消吗？刚付的款",
            "我在[别家|实体店|另一个平台]买到更便宜的了，这单不要了",
            "发货太慢了，我不想等了，直接[取消吧|帮我取消]",
            "可以只取消订单里的{product}吗？其他的照常发",
            "刚才下的单拍错[颜色|尺码|规格]了，先取消我重新拍",
            "别发货了，这个订单我[不要了|不想要了|取消]",
            "已经付了{amount}，现在取消会扣钱吗？",
            "请帮我cancel订单{order}，谢谢",
            "这单可以cancel掉吗？[下错了|买重复了]",
            "订单还在待发货，我[申请取消了|点了取消]为什么[没反应|一直没审核]",
            "订单{order}下错地址了，干脆取消重新下吧",
            "刚下单的{product}帮我撤回一下",
            "这个[订单|预售单]能不能不要了？还没付尾款[|，定金能退吗]",
            "我要取消{order}，家里已经有人买了",
        ],
    },
    "change_address": {
        "en": [
            "I need to change the shipping address on order {order}.",
            "I just moved to {city}, can you update where {order} is going?",
            "Wrong address on my order! It should be {street}, not the old one.",
            "Can the {product} be delivered to my office instead of my home?",
            "Please send {order} to {street} instead.",
            "I typed my [zip code|postcode] wrong. How do I fix it before it ships?",
            "Is it possible to redirect a package that's already with {courier}?",
            "Update the delivery address to {street}, {city} please.",
            "my apartment number is missing on the order, can you add unit [12|4B|305]?",
            "I won't be home next week, can it go to my parents' place in {city}?",
            "How can I edit the [address|delivery address|postcode] after placing an order?",
            "The recipient name and address on {order} are both wrong, can I correct them?",
            "Can you hold the parcel at a pickup point in {city} rather than bring it to my house?",
            "Need to change the 收货地址 for {order}, I moved.",
            "Please deliver {order} to my new place at {street} in {city}.",
            "My building was renamed, can I update the delivery details for {order}?",
            "Can I switch the delivery to my [neighbor's|neighbour's] house? I'll be away.",
            "I'd like the {product} sent to {city} where I'm staying this month.",
        ],
        "zh": [
            "订单{order}的收货地址写错了，能改吗？",
            "我搬家了，帮我把地址改成{street}",
            "麻烦把收件地址改到公司，{street}",
            "下单[后|以后|之后]还能修改地址吗？",
            "门牌号填错了，应该是[8栋|3单元|1502室]，[不是6栋|不是2单元|不是1205室]",
            "能不能把{product}寄到{city}，不寄原来的地址了？",
            "已经交给{courier}了，还能改派送地址吗？",
            "收货人[电话|姓名]和地址都要改一下",
            "我下周出差，包裹能改寄到{city}的酒店吗？",
            "地址少写了[小区名字|楼号|门牌号]，快递员会找不到的，怎么补充？",
            "帮忙改一下地址：{street}，谢谢",
            "怎么在[App|小程序|网页版]里改收货地址？找了半天没找到",
            "我想change一下shipping address，订单{order}",
            "请把订单{order}改成自提，不要送货上门了",
            "收货地址填成老家了，应该寄到{city}",
            "能把{order}的地址改成{street}吗？",
            "快递还没发的话，地址换成{city}的公司地址",
            "小区门牌填错了，帮我改成[7号楼|B座|12栋]",
        ],
    },
    "payment_issue": {
        "en": [
            "My card was declined at checkout but I have enough money [in the account|on it].",
            "I was charged twice for {order}!",
            "The payment went through on my bank app but the order still says "
            "[unpaid|pending payment|awaiting payment].",
            "My {pay} keeps giving me an error when I try to pay.",
            "Why was I charged {hi} when the total was {lo}?",
            "Checkout page [freezes|crashes|goes blank] after I enter my card details.",
            "Can I pay with {pay_brand}? It's not showing as an option.",
            "There's a pending charge of {amount} on my statement I don't recognize.",
            "The [discount code|promo code|voucher] won't apply at checkout, it just says [invalid|expired].",
            "Payment failed [three|four] times, is something wrong with your system?",
            "my {pay} got debited but no order confirmation email",
            "The installment option isn't working with my {pay}.",
            "I keep getting 'transaction timed out' when paying for the {product}.",
            "Can I split the payment between [two cards|a card and a gift card]? It won't let me.",
            "Tried paying with [微信支付|支付宝] but it keeps failing, any idea why?",
            "My bank says the payment for {order} was blocked for security reasons.",
            "Paid {amount} but your site says the payment is still processing.",
            "Got error code [502|E-17|4001] at the payment step, twice.",
            "Why was there a foreign transaction fee when I paid with my {pay}?",
        ],
        "zh": [
            "付款的时候一直提示[支付失败|网络异常|请稍后重试]",
            "{pay}扣了两次钱，订单{order}",
            "[银行卡|支付宝]已经扣款了，订单还显示待付款",
            "为什么我的{pay}[付不了|用不了]？",
            "明明是{lo}，怎么扣了我{hi}？",
            "结算页面一直[转圈|卡住|白屏]，付不了款",
            "[优惠券|红包|满减券]用不了，提示不满足使用条件",
            "有一笔{amount}的扣款我不认识，是你们扣的吗？",
            "花呗分期[选不了|一直灰色的]，怎么回事儿",
            "[信用卡|银行卡]支付一直显示交易[超时|失败]",
            "钱付了但是没收到订单确认[短信|邮件|通知]",
            "可以用[两张卡|银行卡加余额]分开付吗？系统不让",
            "付款一直error，用的{pay}",
            "checkout的时候{pay}跳不出来",
            "重复扣款了！！！[赶紧处理|给个说法]",
            "付了{amount}，页面一直显示支付处理中",
            "用{pay}付款提示风控拦截，怎么办",
            "订单{order}付款成功了吗？银行卡有扣款记录",
            "支付密码输对了还是[说付款失败|提示密码错误]",
        ],
    },
    "product_question": {
        "en": [
            "Does the {product} come with a warranty?",
            "Is the {wear} available in [blue|black|a larger size|XL]?",
            "What's the battery life on the {gadget}?",
            "Will this {kitchen} work with a 220V outlet?",
            "Is the {kitchen} dishwasher safe?",
            "What material is the {wear} made of?",
            "Are these [shoes|boots|sneakers] true to size or should I size [up|down]?",
            "When will the {product} be back in stock?",
            "Can the {gadget} connect to my phone over Bluetooth?",
            "What's the difference between the standard and [pro|plus] versions?",
            "Is the {kids} suitable for a [5|7]-year-old?",
            "does the {gadget} include a charger in the box",
            "How heavy is the {product}? I need something light for travel.",
            "Is this the original brand or a copy? The price seems [low|too good].",
            "Want to buy the {gadget}, but is it 正品? Need to be sure.",
            "Is the {wear} machine washable?",
            "Does the {wearable} have water resistance? I want to use it while swimming.",
            "What are the dimensions of the {product}?",
            "Can I use the {kitchen} for making baby food?",
        ],
        "zh": [
            "这款{product}有保修吗？保修多久？",
            "{wear}有没有[白色|黑色|大码|XL]？",
            "这个{gadget}续航[多久|能用几天]？",
            "请问是正品吗？[假一赔几？|有防伪码吗？|]",
            "{kitchen}可以放洗碗机洗吗？",
            "这个是什么材质的？会不会[起球|掉毛|缩水]？",
            "平时穿38码，这双应该选[哪个码|大一码还是小一码]？",
            "{product}什么时候补货？",
            "这款和那款有什么区别？哪个更适合[家用|送人|学生用]？",
            "{kids}适合几岁的小孩用？",
            "包装里[带充电器|有充电线|送电池]吗？",
            "这个能用在[苹果手机|安卓手机|iPad]上吗？",
            "[尺寸|体积]多大？小户型放得下吗？",
            "这个{gadget}支持Bluetooth 5.0吗？",
            "请问{product}有没有warranty？",
            "{wear}会掉色吗？可以机洗吗？",
            "{wearable}防水吗？游泳能戴吗",
            "这个{kitchen}是多大容量的？",
            "{kids}有3C认证吗？",
        ],
    },
    "shipping_cost": {
        "en": [
            "How much is shipping to {city}?",
            "Is there free delivery if I spend over {threshold}?",
            "Why is the shipping fee {fee} for such a small item?",
            "Do you ship [internationally|overseas|to Canada], and what does it cost?",
            "What's the price difference between standard and [express|priority] shipping?",
            "How much extra for [next-day|same-day|weekend] delivery?",
            "Are delivery charges included in the [price shown|listed price|total at checkout]?",
            "Shipping to {city} costs more than the {product} itself, is that right?",
            "What's the minimum [order|spend] for free shipping?",
            "Is postage free for [members|premium members]?",
            "What would delivery of a big item like the {heavy} to {city} cost?",
            "Do I pay [customs|import duties|taxes] on top of the shipping?",
            "Can you combine my [orders|two parcels] to save on delivery fees?",
            "The checkout added {fee} for shipping, how is that calculated?",
            "What's the 运费 to {city}?",
            "Do you charge extra to deliver to {city}?",
            "Is there a flat delivery rate or does it depend on [weight|distance|parcel size]?",
            "How much is express shipping on the {product}?",
            "Do bulky items like the {heavy} cost more to deliver?",
        ],
        "zh": [
            "寄到{city}运费多少？",
            "满多少[包邮|可以免运费]？",
            "为什么运费要{fee}？东西那么小",
            "偏远地区加运费吗？我在[新疆|西藏|青海]",
            "{courier}和普通快递运费差多少？",
            "[加急|当日达|次日达]配送要多付多少钱？",
            "[价格|标价|这个价]包含运费吗？",
            "买[两件|三件]可以合并运费吗？",
            "[海外|国外|香港]能寄吗？邮费怎么算？",
            "[会员|老客户]包邮吗？",
            "{heavy}这么重，运费是按重量算吗？",
            "订单满{threshold}是不是就免运费了？",
            "请问寄到{city}的shipping fee是多少？",
            "这个包邮吗？free shipping[吗|有没有]",
            "结算的时候多了{fee}运费，这个怎么算的？",
            "寄{city}要多少邮费？",
            "发[顺丰|京东快递]要补运费差价吗？",
            "{product}包邮吗？",
            "同城配送收费吗？我也在{city}",
        ],
    },
    "account_login": {
        "en": [
            "I can't log into my account[ anymore| on the app| since yesterday|].",
            "Forgot my password and the reset email never [arrives|shows up|comes].",
            "The verification code isn't coming to my [phone|email|inbox][ at all|].",
            "My account got locked after too many [attempts|wrong passwords], how do I unlock it?",
            "It keeps saying 'incorrect password' even though I just [changed|reset] it.",
            "How do I change the [email|phone number] linked to my account?",
            "I think someone else logged into my account[, please help|. I got a login alert from another city].",
            "can't sign in with my [google|apple|facebook] account anymore",
            "The app logs me out every [few minutes|time I switch apps].",
            "I used to log in with my old [phone number|work email], which I no longer have.",
            "[Two-factor authentication|The 2FA step] asks for a code I never receive.",
            "Is there a way to sign in without the SMS code? I'm abroad in {city}.",
            "Signed up [yesterday|last night] but the activation link says expired.",
            "The login page just shows a blank screen on my [laptop|phone|tablet].",
            "我的[账号|帐号] keeps saying login failed, what should I do?",
            "Password reset link says ['invalid token'|'link expired'] every time.",
            "I can't remember which [email|phone number] I registered with, how do I get back in?",
            "[Face ID|Fingerprint] login stopped working after the [app|iOS] update.",
            "Locked out after [changing|losing my] phone, the authenticator app is gone.",
        ],
        "zh": [
            "[登录不上账号了|账号登不进去了|怎么都登录不了]",
            "忘记密码了，怎么[重置|找回]？",
            "验证码一直收不到[|，短信也没有|，试了好几次]",
            "账号被[锁了|冻结了]，怎么解锁？",
            "密码明明是对的，一直提示[密码错误|账号或密码不正确]",
            "换手机号了，旧号码收不到验证码，怎么[登录|登进去]？",
            "感觉我的帐号被别人登了，有[异地登录提醒|陌生设备登录记录]",
            "[微信|QQ|支付宝]授权登录失败",
            "App老是自动退出登录[|，每次都要重新输密码]",
            "注册时的激活[链接|邮件]过期了",
            "怎么修改绑定的[邮箱|手机号]？",
            "扫码登录一直[没反应|提示二维码失效]",
            "我的account登不上去，一直[loading|转圈]",
            "password reset的[邮件|短信]没收到",
            "人在{city}出差，登录需要验证，但是收不到短信",
            "重置密码的链接点开显示[已失效|404]",
            "忘了当初用哪个[手机号|邮箱]注册的，怎么找回账号？",
            "更新App以后[面容|指纹]登录用不了了",
            "账号提示[存在风险|异常]被冻结了，怎么申诉登录？",
        ],
    },
    "complaint": {
        "en": [
            "Your customer service is the worst I've [dealt with|ever seen].",
            "I've been on hold for [40 minutes|an hour]. This is ridiculous.",
            "The courier threw my parcel over the [fence|gate]. [Unacceptable.|Who does that?]",
            "Nobody has replied to my [emails|messages] in a week. Very disappointed.",
            "The {product} smells terrible and the quality is awful.",
            "Your delivery driver was rude to my [mother|wife|neighbour].",
            "I want to file a formal complaint about the agent I spoke to [yesterday|this morning].",
            "Every single order from you arrives [late|damaged]. Fix your logistics.",
            "The packaging was [soaked|torn open] and half crushed. Do you even care?",
            "Honestly, [terrible|awful] experience, I'm never [shopping here|ordering from you] again.",
            "The agent hung up on me [twice|again|three times]!",
            "why is it so hard to [talk to|reach] a real person here",
            "The {product} looks nothing like the photos. Misleading ads.",
            "I'm really unhappy with how my last [three|few] orders were handled.",
            "Your 客服 keeps giving me copy-paste answers, so [frustrating|annoying].",
            "Third time I've had to explain the same problem to a different agent. [Pathetic.|Seriously?]",
            "The {courier} guy left my package in the rain. Not impressed.",
            "Your return policy is a joke and your [staff|agents] don't care.",
            "I waited at home all [day|afternoon] and nobody came. What a waste of my time.",
        ],
        "zh": [
            "你们客服态度[太差了|也太差了吧|真的很差]",
            "等了[半个小时|一个多小时]都没人理我，什么服务",
            "快递员直接把包裹扔在[门口|楼下]，也不打电话",
            "{product}质量太差了，跟图片完全不一样",
            "我要投诉[昨天|上午|刚才]那个客服",
            "每次买东西都发货[慢|拖拖拉拉]，能不能改进一下",
            "包装都[压坏了|破了]，一点都不用心",
            "再也不在你们家买了，[体验极差|太失望了|什么破服务]",
            "打了[五|好几]次电话都没人接",
            "客服一直用[机器人|模板]回复，根本解决不了问题",
            "{courier}的快递员态度恶劣，我要投诉",
            "宣传和实物差太多了，[虚假宣传|纯属忽悠]",
            "[服务|售后]太差了，真的很disappointed",
            "你们的售后是在搞笑吗？完全no response[|，消息都不回]",
            "说好24小时回复，[三天|一个星期]了还没消息",
            "每次都要重复说一遍问题，换个客服又重新问，[烦死了|太折腾了]",
            "{courier}把快递放在楼下淋雨，太不负责了",
            "在家等了一整[天|个下午]都没人送，浪费我时间",
            "你们的退换货政策太坑了，以后[不会再买|再也不来了]",
        ],
    },
    "greeting": {
        "en": [
            "Hi there, [anyone available|is anybody around|anyone on the line|anyone awake] [?|right now?]",
            "Hello! Good [morning|day|afternoon] [to you|everyone|].",
            "Hey, is this the [support chat|help desk|customer service line|right place to ask]?",
            "Good evening, I have [a quick question|a small question|a couple of questions|a silly question].",
            "Hi, are you a [bot|robot|chatbot] or a real [person|human]?",
            "Hello, can [someone|somebody|anyone] [help me|assist me|give me a hand] please?",
            "Thanks so much, have a [great|lovely|nice|good] [day|evening|weekend]!",
            "Hey hey, [you guys|is the team|are you] [open today|online right now|around]?",
            "hello is [anyone|anybody|someone] [there|here|around]",
            "Good afternoon, nice to [meet|chat with|talk to] you[ again|].",
            "Hi, I'm back, sorry for the [wait|delay|long pause][ earlier|].",
            "Morning! Hope you're doing [well|great|okay][ today|].",
            "Thank you, that's all I [needed|wanted to know|had]. [Bye|Cheers|Take care]!",
            "Hiya, just checking if this chat [works|is working|is live][ at all|].",
            "Hi 你好, [anyone here|is anyone online|can you read this]?",
            "Hello again, [it's me|me again|it's the same person] from [earlier|this morning|yesterday].",
            "Yo, [anybody|anyone] [home|there|around]?",
            "Hi, [happy|good] [Monday|Friday]! [Hope all's well.|How's it going?]",
            "[Cheers|Thanks a bunch], you've been [really helpful|super helpful|a great help].",
            "Hello hello, [first time|new here], [just saying hi|nice to meet you].",
        ],
        "zh": [
            "你好，[在吗|在不在|有人在吗]？",
            "您好，[有人吗|有客服吗|请问有人在线吗|能聊一下吗]",
            "[早上|中午|上午]好，[想咨询一下|想问点事情|有个问题请教]",
            "哈喽，[客服|小姐姐|小哥哥|有人]在线吗？",
            "你好，请问[是人工客服吗|是机器人吗|现在是真人在回复吗]？",
            "谢谢，没有其他[问题|事情]了，[再见|拜拜|下次再聊]",
            "晚上好[～|呀|啊]，[打扰了|还在上班吗|辛苦啦]",
            "在不在？[|有人回一下吗|回我一下]",
            "亲，[在线吗|在的话回个话|现在方便吗]",
            "好的[谢谢你|多谢|感谢]，辛苦了[|～|！]",
            "您好，[打扰一下|冒昧打扰|不好意思打扰了]",
            "下午好，[麻烦帮个忙|想请教一下|有点事想问]",
            "hello，[有人在吗|客服在吗|能回复一下吗]",
            "hi，客服你好[|呀]，[在忙吗|今天辛苦了|最近好吗]",
            "嗨，我回来了，刚[刚有事走开了|才去接了个电话|在开会]",
            "收到啦，谢谢[亲|你们|客服]，祝[你们生意兴隆|你工作顺利|周末愉快]",
            "[喂|哈喽]，[有人吗|听得到吗|在线吗]",
            "[周一|周五]好呀，[今天忙吗|打扰啦]",
            "[多谢|太感谢]了，你们[服务真好|效率真高|很专业]",
            "第一次来，[先打个招呼|跟你们打个招呼|问个好]",
        ],
    },
}

# Slot pools for the intent templates (all values composed for this project).
INTENT_POOLS = {
    "en": {
        "product": [
            "blender",
            "phone case",
            "Bluetooth headset",
            "desk lamp",
            "hiking backpack",
            "memory foam pillow",
            "27-inch monitor",
            "water filter",
            "electric kettle",
            "yoga mat",
            "smart watch",
            "air fryer",
            "rain jacket",
            "backpack",
            "coffee grinder",
            "Nova X2 case",
            "AeroBlend 500",
            "standing desk",
        ],
        "gadget": [
            "noise-cancelling headset",
            "smart watch",
            "Bluetooth speaker",
            "fitness tracker",
            "Zephyr Pro headset",
            "e-reader",
            "action camera",
        ],
        "kitchen": [
            "blender",
            "electric kettle",
            "air fryer",
            "rice cooker",
            "coffee grinder",
            "AeroBlend 500",
            "food processor",
        ],
        "wear": [
            "rain jacket",
            "wool sweater",
            "hoodie",
            "linen shirt",
            "down coat",
            "Harbor fleece jacket",
            "denim skirt",
        ],
        "heavy": ["standing desk", "27-inch monitor", "air fryer", "office chair", "treadmill", "bookshelf"],
        "wearable": ["smart watch", "fitness tracker", "Zephyr Pro headset", "Orbit smart watch"],
        "kids": ["kids' scooter", "building block set", "toddler backpack", "drawing tablet", "balance bike"],
        "courier": ["FedEx", "UPS", "DHL", "USPS", "Royal Mail", "QuickShip", "SF Express"],
        "city": [
            "Chicago",
            "Toronto",
            "Manchester",
            "Austin",
            "Singapore",
            "Sydney",
            "Shanghai",
            "Vancouver",
            "Dublin",
            "Melbourne",
            "Hong Kong",
            "Seattle",
        ],
        "street": [
            "42 Elm Street",
            "15 Harbour Road",
            "210 King Street West",
            "8 Birch Lane",
            "1200 Market Street",
            "77 Orchard Road",
            "19 Riverside Drive",
            "350 Queen Street",
            "Unit 5, 31 Baker Avenue",
        ],
        "pay": ["Visa card", "PayPal", "Apple Pay", "Mastercard", "debit card", "Alipay", "gift card"],
        "pay_brand": ["PayPal", "Apple Pay", "Google Pay", "Alipay", "WeChat Pay", "Amex"],
        "days": [
            "3 days",
            "five days",
            "a week",
            "two weeks",
            "10 days",
            "over a month",
            "4 days",
            "nearly three weeks",
        ],
    },
    "zh": {
        "product": [
            "电饭煲",
            "蓝牙耳机",
            "羽绒服",
            "扫地机器人",
            "保温杯",
            "手机壳",
            "空气炸锅",
            "运动鞋",
            "机械键盘",
            "儿童书包",
            "投影仪",
            "电动牙刷",
            "面霜",
            "床上四件套",
            "AeroBlend 500破壁机",
        ],
        "gadget": ["蓝牙耳机", "智能手表", "手环", "蓝牙音箱", "平板", "Zephyr Pro耳机", "电子书阅读器"],
        "kitchen": ["破壁机", "电水壶", "空气炸锅", "保温杯", "电饭煲", "榨汁杯", "不粘锅"],
        "wear": ["羽绒服", "卫衣", "牛仔裤", "连衣裙", "冲锋衣", "毛衣", "衬衫"],
        "heavy": ["扫地机器人", "床垫", "空气净化器", "跑步机", "书柜", "洗衣机"],
        "wearable": ["智能手表", "手环", "运动耳机", "Zephyr Pro耳机"],
        "kids": ["儿童滑板车", "积木", "儿童书包", "绘画板", "平衡车"],
        "courier": ["顺丰", "中通", "圆通", "韵达", "京东物流", "EMS", "申通", "极兔"],
        "city": ["北京", "上海", "广州", "深圳", "成都", "杭州", "武汉", "西安", "南京", "重庆", "苏州", "厦门"],
        "street": [
            "上海市浦东新区张江路88号",
            "广州市天河区体育西路103号",
            "北京市朝阳区建国路5号院",
            "深圳市南山区科技园南区",
            "成都市武侯区人民南路四段",
            "杭州市西湖区文三路259号",
            "武汉市江汉区解放大道688号",
            "南京市鼓楼区中山路18号",
        ],
        "pay": ["支付宝", "微信支付", "银行卡", "信用卡", "花呗", "云闪付"],
        "days": ["三天", "五天", "一周", "一个星期", "十天", "半个月", "两周", "四天"],
    },
}

DECOR = {
    "en": {
        "prefix": ["Hi, ", "Hello, ", "Hey, ", "Excuse me, ", "Quick question: ", "Um, ", "Ok so ", "Hi team, "],
        "suffix": [
            " Thanks!",
            " Thank you.",
            " thx",
            " Please help.",
            " ASAP please.",
            " Any help appreciated.",
            " This is urgent.",
        ],
        "complaint_suffix": [" Seriously.", " Unbelievable.", " Not happy at all.", " Do better."],
    },
    "zh": {
        "prefix": ["你好，", "您好，", "亲，", "在吗？", "客服，", "麻烦问下，", "请问"],
        "suffix": ["谢谢！", "麻烦尽快处理。", "急！！", "在线等。", "谢谢啦～"],
        "complaint_suffix": ["无语。", "太离谱了！", "气死了！", "给个说法。"],
    },
}


def order_id(rng: random.Random, allow_hash: bool = True) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    k = rng.random()
    if k < 0.4:
        return f"{rng.choice(letters)}{rng.randint(1000, 9999)}-{rng.randint(10, 99)}"
    if k < 0.6 and allow_hash:
        return f"#{rng.randint(10000, 99999)}"
    if k < 0.85:
        return f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 9999):04d}"
    return f"SO-{rng.randint(100000, 999999)}"


# Plausible price points; the sign/unit style is chosen separately.
EN_PRICES = (
    6,
    9.99,
    12.5,
    14.99,
    19.99,
    24,
    29.95,
    35,
    39.99,
    45,
    49.5,
    59.99,
    64,
    79,
    89.99,
    99,
    120,
    129.99,
    149,
    175,
    199.99,
    230,
    249,
)
ZH_PRICES = (
    19,
    29,
    39,
    49,
    59,
    69,
    79,
    89,
    99,
    128,
    139,
    149,
    168,
    199,
    238,
    259,
    299,
    329,
    399,
    459,
    499,
    599,
    699,
    799,
    899,
    999,
    1299,
    1599,
    1999,
)
PRICE_RANGES = {
    # kind: (en range in $, zh range in yuan)
    "amount": ((6, 250), (19, 1999)),
    "fee": ((3.99, 39), (6, 60)),
    "threshold": ((25, 99), (49, 299)),
}


def fmt_price(v: float, lang: str, style: float) -> str:
    num = f"{v:.2f}" if isinstance(v, float) and v != int(v) else str(int(v))
    if lang == "en":
        return f"${num}" if style < 0.85 else f"¥{round(v * 7)}"
    if style < 0.4:
        return f"¥{num}"
    if style < 0.55:
        return f"￥{num}"
    if style < 0.85:
        return f"{num}元"
    return f"{num}块"


def price_value(rng: random.Random, lang: str, kind: str) -> float:
    lo, hi = PRICE_RANGES[kind][0 if lang == "en" else 1]
    if kind == "amount":
        return rng.choice([p for p in (EN_PRICES if lang == "en" else ZH_PRICES) if lo <= p <= hi])
    if kind == "fee":
        en_opts = (3.99, 4.99, 5.5, 7.99, 9.95, 12, 15, 19.99, 25, 39)
        zh_opts = (6, 8, 10, 12, 15, 18, 20, 23, 30, 45, 60)
    else:  # threshold
        en_opts = (25, 35, 49, 50, 59, 75, 99)
        zh_opts = (49, 59, 88, 99, 129, 199, 299)
    opts = en_opts if lang == "en" else zh_opts
    return rng.choice(opts)


def amount(rng: random.Random, lang: str, kind: str = "amount") -> str:
    return fmt_price(price_value(rng, lang, kind), lang, rng.random())


def price_pair(rng: random.Random, lang: str) -> tuple[str, str]:
    """(lower, higher) prices in the same notation, e.g. for overcharge complaints."""
    pool = EN_PRICES if lang == "en" else ZH_PRICES
    lo_v, hi_v = sorted(rng.sample(pool, 2))
    style = rng.random()
    return fmt_price(lo_v, lang, style), fmt_price(hi_v, lang, style)


ALT_RE = re.compile(r"\[([^\[\]]*)\]")
SLOT_RE = re.compile(r"\{(\w+)\}")
CJK_RE = re.compile(r"[\u3400-\u9fff]")


def expand_alternations(tpl: str, rng: random.Random) -> str:
    return ALT_RE.sub(lambda m: rng.choice(m.group(1).split("|")), tpl)


def fill_intent(tpl: str, lang: str, rng: random.Random) -> str:
    pools = INTENT_POOLS[lang]
    used: dict[str, str] = {}

    def fill(m: re.Match) -> str:
        slot = m.group(1)
        if slot == "order":
            return order_id(rng)
        if slot in ("amount", "fee", "threshold"):
            return amount(rng, lang, slot)
        if slot in ("lo", "hi"):
            if "lo" not in used:
                used["lo"], used["hi"] = price_pair(rng, lang)
            return used[slot]
        return rng.choice(pools[slot])

    return SLOT_RE.sub(fill, expand_alternations(tpl, rng))


def tidy_en(s: str, capitalize: bool) -> str:
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\s+([,.?!:;])", r"\1", s)
    return s[:1].upper() + s[1:] if capitalize else s


# Capitalised words that must keep their case after a prefix ("Hi, PayPal ...").
PROPER_WORDS = {w for vals in INTENT_POOLS["en"].values() for v in vals for w in v.split() if w[:1].isupper()} | {
    "I",
    "I'd",
    "I'm",
    "I've",
    "I'll",
}


def typo(s: str, rng: random.Random) -> str:
    words = s.split(" ")
    idx = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 5]
    if not idx:
        return s
    i = rng.choice(idx)
    w = words[i]
    j = rng.randint(1, len(w) - 3)
    kind = rng.random()
    if kind < 0.5:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]  # swap neighbours
    elif kind < 0.8:
        w = w[:j] + w[j + 1 :]  # drop a letter
    else:
        w = w[:j] + w[j] + w[j:]  # double a letter
    words[i] = w
    return " ".join(words)


QUESTION_PREFIXES = ("Quick question: ", "请问", "麻烦问下，")


def is_question(s: str) -> bool:
    return "?" in s or "？" in s or "吗" in s


def _add_prefix(s: str, lang: str, rng: random.Random) -> str:
    p = rng.choice(DECOR[lang]["prefix"])
    if not is_question(s) and p in QUESTION_PREFIXES:
        return s
    if lang == "en":
        if s.lower().startswith(("hi", "hey", "hello")):
            return s
        first = s.split(" ", 1)[0]
        return p + (s if first in PROPER_WORDS else s[:1].lower() + s[1:])
    if s.startswith(p.strip("，？")) or s.startswith(("你好", "您好", "请问", "在")):
        return s
    return p + s


def _add_suffix(s: str, lang: str, label: str, rng: random.Random) -> str:
    d = DECOR[lang]
    suf = rng.choice(d["complaint_suffix"] if label == "complaint" else d["suffix"])
    if ("谢" in suf and "谢" in s) or ("thank" in suf.lower() and "thank" in s.lower()):
        return s  # no double thanks
    if lang == "en":
        return s + suf if s[-1] in ".?!" else s
    return s + suf if s[-1] in "。！？!?～" else s + "，" + suf


def _casualise(s: str, lang: str, rng: random.Random) -> str:
    if lang == "en":
        if rng.random() < 0.10:
            s = s.lower().rstrip(".!")
        if rng.random() < 0.09:
            s = typo(s, rng)
        return s
    if rng.random() < 0.15:
        s = s.replace("？", "?")
    if rng.random() < 0.1 and s.endswith("。"):
        s = s[:-1]
    return s


def decorate(s: str, lang: str, label: str, rng: random.Random) -> str:
    """Optional greeting prefix / politeness suffix / casual writing / typo."""
    if label == "greeting":
        return s
    if rng.random() < 0.22:
        s = _add_prefix(s, lang, rng)
    if rng.random() < 0.18:
        s = _add_suffix(s, lang, label, rng)
    return _casualise(s, lang, rng)


def skeleton(s: str) -> str:
    return re.sub(r"[\W_]+", "", re.sub(r"\d+", "0", s.lower()))


def assign_templates(n: int, rng: random.Random, n_dev: int, n_test: int) -> dict[str, list[int]]:
    idx = list(range(n))
    rng.shuffle(idx)
    return {
        "dev": sorted(idx[:n_dev]),
        "test": sorted(idx[n_dev : n_dev + n_test]),
        "train": sorted(idx[n_dev + n_test :]),
    }


def generate_from_templates(templates, make, target, rng, seen_text, seen_skel, key):
    """Round-robin over ``templates`` until ``target`` unique items exist.

    ``make(tpl)`` returns ``(core, item)`` where ``core`` is the text before
    cosmetic decoration (greeting prefixes, typos, ...).  New cores are
    preferred so that rows differ in substance, not only in decoration.
    """
    out = []
    seen_core: set[str] = set()
    order = list(templates)
    rng.shuffle(order)
    stale = 0
    i = 0
    while len(out) < target:
        tpl = order[i % len(order)]
        i += 1
        for attempt in range(80):
            core, item = make(tpl)
            k = key(item)
            sk = skeleton(k)
            if attempt < 50 and skeleton(core) in seen_core:
                continue
            if k not in seen_text and sk not in seen_skel:
                seen_text.add(k)
                seen_skel.add(sk)
                seen_core.add(skeleton(core))
                out.append(item)
                stale = 0
                break
        else:
            stale += 1
            if stale > len(order):
                raise RuntimeError(f"templates exhausted: {templates[:2]}")
    return out


def intent_targets(label_index: int) -> dict[str, dict[str, int]]:
    even = label_index % 2 == 0
    return {
        "train": {"en": 21, "zh": 21},
        "dev": {"en": 5 if even else 4, "zh": 4 if even else 5},
        "test": {"en": 4 if even else 5, "zh": 5 if even else 4},
    }


def build_intents(rng: random.Random) -> dict[str, list[dict]]:
    seen_text: set[str] = set()
    seen_skel: set[str] = set()
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for li, label in enumerate(LABELS):
        targets = intent_targets(li)
        for lang in ("en", "zh"):
            tpls = INTENT_TEMPLATES[label][lang]
            parts = assign_templates(len(tpls), rng, 3, 3)
            for split in SPLITS:
                chosen = [tpls[i] for i in parts[split]]

                def make(tpl, lang=lang, label=label):
                    s = fill_intent(tpl, lang, rng)
                    if lang == "en":
                        s = tidy_en(s, capitalize=tpl.startswith(("[", "{")))
                    else:
                        s = re.sub(r"\s+", " ", s).strip()
                    return s, decorate(s, lang, label, rng)

                texts = generate_from_templates(
                    chosen, make, targets[split][lang], rng, seen_text, seen_skel, key=lambda t: t
                )
                rows[split].extend({"text": t, "label": label} for t in texts)
    for split in SPLITS:
        rng.shuffle(rows[split])
    return rows


# --------------------------------------------------------------------------
# NER
# --------------------------------------------------------------------------

ENTITY_TYPES = ("PER", "ORG", "LOC", "PRODUCT", "ORDER")

NER_SLOT_TYPES = {
    "PER": "PER",
    "SHOP": "ORG",
    "COURIER": "ORG",
    "CITY": "LOC",
    "ADDR": "LOC",
    "PRODUCT": "PRODUCT",
    "ORDER": "ORDER",
    "generic": None,
    "amount": None,
    "days": None,
}

NER_POOLS = {
    "en": {
        "PER": [
            "Emily Chen",
            "Raj Patel",
            "Maria Gonzalez",
            "Tom Becker",
            "Aisha Khan",
            "Lucas Martin",
            "Hannah Park",
            "Daniel Okafor",
            "Sophie Wright",
            "Kenji Watanabe",
            "Olivia Brown",
            "Mohammed Ali",
            "Grace Liu",
            "Ben Carter",
            "Nina Petrova",
            "Sam",
            "Priya",
            "Jake",
            "Wei Zhang",
            "Laura",
        ],
        "SHOP": [
            "Bluefin Electronics",
            "Cedar Lane Home",
            "Sunny Kids Shop",
            "PetNest",
            "Harbor Outdoor Company",
            "BrightDesk Office Supply",
            "Maple & Moss",
            "UrbanThread",
            "Greenleaf Grocers",
            "Pixel Corner",
        ],
        "COURIER": [
            "FedEx",
            "UPS",
            "DHL",
            "QuickShip Logistics",
            "Royal Mail",
            "Canada Post",
            "SF Express",
            "Swift Parcel",
        ],
        "CITY": [
            "Chicago",
            "Toronto",
            "Manchester",
            "Austin",
            "Singapore",
            "Sydney",
            "Shanghai",
            "New York",
            "San Francisco",
            "Vancouver",
            "Dublin",
            "Melbourne",
            "Leeds",
            "Auckland",
        ],
        "ADDR": [
            "42 Elm Street",
            "15 Harbour Road",
            "210 King Street West",
            "8 Birch Lane",
            "1200 Market Street",
            "77 Orchard Road",
            "Unit 5, 31 Baker Avenue",
            "19 Riverside Drive",
            "350 Queen Street",
            "6 Willow Court",
            "901 Lakeview Boulevard",
        ],
        "PRODUCT": [
            "AeroBlend 500 blender",
            "Nova X2 phone case",
            "Lumo desk lamp",
            "TrailRunner 4 shoes",
            "CloudSoft pillow",
            "PixelView 27 monitor",
            "AquaPure water filter",
            "Zephyr Pro earbuds",
            "KettleMate kettle",
            "SnugFit yoga mat",
            "Orbit smart watch",
            "Brisk air fryer",
            "Nimbus backpack",
            "Echo Mini speaker",
        ],
        "generic": ["phone", "laptop", "tablet", "watch", "monitor", "kettle", "blender"],
        "days": ["5 days", "a week", "two weeks", "ten days", "three weeks"],
    },
    "zh": {
        "PER": [
            "王芳",
            "李明",
            "张伟",
            "陈静",
            "刘洋",
            "赵磊",
            "孙丽",
            "周杰",
            "吴敏",
            "郑浩",
            "黄婷",
            "林晓雨",
            "欧阳娜",
            "马超",
            "何佳",
            "许文博",
            "杨帆",
            "高雪",
        ],
        "SHOP": [
            "京东",
            "天猫",
            "苏宁易购",
            "拼多多",
            "云朵家居旗舰店",
            "乐淘童装店",
            "星河数码专营店",
            "山野户外店",
            "青禾生鲜",
        ],
        "COURIER": ["顺丰", "中通快递", "圆通", "韵达", "京东物流", "EMS", "申通快递", "极兔速递"],
        "CITY": [
            "北京",
            "上海",
            "广州",
            "深圳",
            "成都",
            "杭州",
            "武汉",
            "西安",
            "南京",
            "重庆",
            "苏州",
            "厦门",
            "天津",
            "长沙",
        ],
        "ADDR": [
            "浦东新区张江路88号",
            "天河区体育西路103号",
            "朝阳区建国路5号院",
            "南山区科技园南区",
            "武侯区人民南路四段",
            "西湖区文三路259号",
            "江汉区解放大道688号",
            "鼓楼区中山路18号",
            "思明区湖滨南路",
            "雁塔区小寨东路12号",
        ],
        "PRODUCT": [
            "小熊电饭煲",
            "云朵枕头",
            "星光投影仪",
            "极光X5手机",
            "暖冬羽绒服",
            "清风空气净化器",
            "Zephyr Pro耳机",
            "萌宝儿童书包",
            "速热电水壶",
            "灵动扫地机器人",
            "悦动跑鞋",
            "AeroBlend 500破壁机",
            "山岚冲锋衣",
        ],
        "generic": ["手机", "平板", "显示器", "手表", "电水壶", "耳机"],
        "days": ["五天", "一周", "两个星期", "十天", "半个月"],
    },
}

NER_TEMPLATES = {
    "en": [
        "[Hi|Hello|Hey], this is {PER}, my order {ORDER} from {SHOP} hasn't [arrived|shipped] yet.",
        "{COURIER} says the {PRODUCT} was delivered to {ADDR}, but I never [got|received] it.",
        "Can you ship the {PRODUCT} to {CITY} instead[ of my home address|]?",
        "My name is {PER} and I'd like to [return|exchange] order {ORDER}.",
        "The parcel left the {COURIER} [hub|depot] in {CITY} [yesterday|on Monday|two days ago].",
        "I bought the {PRODUCT} at {SHOP} last [week|month] and [it stopped working|it's already falling apart].",
        "Please update the address on {ORDER} to {ADDR}, {CITY}.",
        "[Agent|Your colleague] {PER} promised me a callback but nobody called.",
        "Is the {PRODUCT} in stock at your {CITY} [store|shop|branch]?",
        "[Thanks|Thank you|Cheers] {PER}, that [solved it|fixed everything|helped a lot]!",
        "Order {ORDER} and order {ORDER} were both charged to my [card|account].",
        "I was transferred from {SHOP} support to {COURIER} and back again.",
        "Does the {PRODUCT} come with a [warranty|charger|manual]?",
        "How much does [shipping|delivery] to {CITY} cost?",
        "[Hello|Hi], I need help with my [account|password|login].",
        "{PER} from the {CITY} warehouse said the {PRODUCT} is back in stock.",
        "My {generic} arrived with a [cracked screen|dead battery|missing cable].",
        "Could {COURIER} leave the package with my [neighbour|neighbor|building manager] at {ADDR}?",
        "I'm writing on behalf of {PER}, who placed order {ORDER}.",
        "The {PRODUCT} I got from {SHOP} is a different [colour|color|size] than pictured.",
        "Can I pick up {ORDER} in person in {CITY}[ tomorrow|]?",
        "We moved from {CITY} to {CITY}, so please change the delivery address.",
        "Your driver from {COURIER} was very [polite|helpful], please thank him.",
        "I'd like to cancel {ORDER}; I ordered the {PRODUCT} twice by mistake.",
        "The refund for {ORDER} still hasn't reached my account after {days}.",
        "Is {SHOP} an [official|authorised] seller of the {PRODUCT}?",
        "Please ask {PER} to email me the [invoice|receipt] for {ORDER}.",
        "The tracking number from {COURIER} doesn't work[ at all|].",
        "I live at {ADDR} in {CITY} and nobody [knocked|rang the bell].",
        "What time does the {SHOP} [branch|store] in {CITY} close[ today|]?",
        "I got someone else's parcel addressed to {PER}.",
        "The box was crushed and the {generic} inside is [broken|scratched].",
        "Does {SHOP} [ship|deliver] to {CITY}?",
        "Thank you for waiting, my name is {PER} and I'll be helping you today.",
        "The {PRODUCT} and the {PRODUCT} were supposed to ship together under {ORDER}.",
        "Why was I charged {amount} for {ORDER}?",
        "{COURIER} tried to deliver while I was out; can they try again [tomorrow|on Saturday]?",
        "[Send|Deliver] it to {ADDR} please, it's my office.",
        "Good [morning|afternoon], is anyone available to chat?",
        "{PER} here again about the {PRODUCT} that never arrived.",
        "Please deliver to my [mom|dad|sister], {PER}, at {ADDR}.",
        "I saw the {PRODUCT} cheaper at {SHOP}. Can you match the price?",
    ],
    "zh": [
        "[你好|您好]，我是{PER}，订单{ORDER}还没到。",
        "{COURIER}显示已经送到{ADDR}了，但我[没收到|没看到]。",
        "{PRODUCT}能[寄到|发到]{CITY}吗？",
        "我在{SHOP}买的{PRODUCT}[坏了|用了两天就坏了]。",
        "请把订单{ORDER}的地址改成{ADDR}。",
        "客服{PER}说会给我回电话，但[一直没有|到现在也没打]。",
        "包裹[昨天|今天]从{CITY}发出了吗？",
        "[谢谢|多谢|感谢]{PER}，问题解决了！",
        "订单{ORDER}和{ORDER}都扣了钱。",
        "{PRODUCT}有[保修|发票]吗？",
        "请问寄到{CITY}[运费|邮费]多少？",
        "[你好|您好]，我想咨询一下[账号|密码|登录]的问题。",
        "{CITY}仓库的{PER}说{PRODUCT}已经补货了。",
        "我的{generic}收到的时候[屏幕是裂的|开不了机]。",
        "能让{COURIER}把包裹放在{ADDR}的[快递柜|驿站]吗？",
        "我帮{PER}问一下，订单号是{ORDER}。",
        "从{SHOP}买的{PRODUCT}[颜色|尺寸]和图片不一样。",
        "{ORDER}可以到{CITY}门店自提吗？",
        "我们从{CITY}搬到{CITY}了，收货地址要改。",
        "{COURIER}的快递员态度很好，替我谢谢他。",
        "订单{ORDER}我想取消，{PRODUCT}买重复了。",
        "{ORDER}的退款{days}了还没到账。",
        "{SHOP}是{PRODUCT}的官方授权店吗？",
        "麻烦{PER}把{ORDER}的[发票|收据]发到我邮箱。",
        "{COURIER}给的单号查不到物流[信息|]。",
        "我住在{CITY}{ADDR}，送货的时候没人敲门。",
        "{SHOP}在{CITY}的门店几点[关门|开门]？",
        "收到一个别人的包裹，收件人是{PER}。",
        "{PRODUCT}和{PRODUCT}本来应该一起发，订单{ORDER}。",
        "为什么订单{ORDER}扣了我{amount}？",
        "{COURIER}[今天|上午]来送货时我不在家，明天能再送一次吗？",
        "请送到{ADDR}，那是我[公司|单位]。",
        "[早上好|下午好]，请问有人在吗？",
        "又是我{PER}，还是那个{PRODUCT}一直没到的问题。",
        "请送给我[妈妈|爸爸|姐姐]{PER}，地址是{ADDR}。",
        "我看到{SHOP}的{PRODUCT}更便宜，能保价吗？",
        "请问{SHOP}发货用的是{COURIER}吗？",
        "包装盒压扁了，里面的{generic}也[碎了|坏了]。",
        "您好，我是客服{PER}，很高兴为您服务。",
        "{PER}的订单{ORDER}能改寄到{CITY}吗？",
        "我的order {ORDER}还在{CITY}吗？",
        "这个{PRODUCT}有warranty吗？",
    ],
}

EN_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['\-.,/][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
ZH_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['\-.][A-Za-z0-9]+)*|\S")


def tokenize(text: str, lang: str) -> list[str]:
    return (EN_TOKEN_RE if lang == "en" else ZH_TOKEN_RE).findall(text)


def split_pool(values: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    """(train_pool, full_pool): ~25% of values are never used in train."""
    vals = list(values)
    rng.shuffle(vals)
    cut = max(1, len(vals) // 4)
    return vals[cut:], list(values)


def ner_sentence(tpl: str, lang: str, pools: dict[str, list[str]], rng: random.Random):
    """Fill one NER template; returns (plain text, [(token, tag), ...])."""
    tokens: list[tuple[str, str]] = []
    used: set[str] = set()
    tpl = expand_alternations(tpl, rng)
    pos = 0
    for m in SLOT_RE.finditer(tpl):
        tokens.extend((t, "O") for t in tokenize(tpl[pos : m.start()], lang))
        slot = m.group(1)
        if slot == "ORDER":
            value = order_id(rng, allow_hash=False)
        elif slot == "amount":
            value = amount(rng, lang)
        else:
            value = rng.choice([v for v in pools[slot] if v not in used])
        used.add(value)
        etype = NER_SLOT_TYPES[slot]
        for j, t in enumerate(tokenize(value, lang)):
            tokens.append((t, "O" if etype is None else ("B-" if j == 0 else "I-") + etype))
        pos = m.end()
    tokens.extend((t, "O") for t in tokenize(tpl[pos:], lang))
    return " ".join(t for t, _ in tokens), tokens


def _entity_types(tpl: str) -> set[str]:
    return {NER_SLOT_TYPES[m] for m in SLOT_RE.findall(tpl)} - {None}


def split_ner_templates(tpls: list[str], rng: random.Random) -> dict[str, list[int]]:
    """Re-draw until every split sees every entity type and an entity-free template."""
    while True:
        parts = assign_templates(len(tpls), rng, 6, 6)
        if all(
            set().union(*(_entity_types(tpls[i]) for i in parts[sp])) >= set(ENTITY_TYPES)
            and any(not _entity_types(tpls[i]) for i in parts[sp])
            for sp in SPLITS
        ):
            return parts


def build_ner(rng: random.Random) -> dict[str, list[list[tuple[str, str]]]]:
    pools = {}
    for lang in ("en", "zh"):
        pools[lang] = {}
        for slot, vals in NER_POOLS[lang].items():
            train_vals, all_vals = split_pool(vals, rng)
            pools[lang][slot] = {"train": train_vals, "dev": all_vals, "test": all_vals}

    targets = {"train": {"en": 125, "zh": 125}, "dev": {"en": 28, "zh": 27}, "test": {"en": 27, "zh": 28}}
    seen_text: set[str] = set()
    seen_skel: set[str] = set()
    out: dict[str, list] = {s: [] for s in SPLITS}
    for lang in ("en", "zh"):
        tpls = NER_TEMPLATES[lang]
        parts = split_ner_templates(tpls, rng)
        for split in SPLITS:
            split_pools = {slot: v[split] for slot, v in pools[lang].items()}
            sents = generate_from_templates(
                [tpls[i] for i in parts[split]],
                lambda tpl, lang=lang, p=split_pools: ner_sentence(tpl, lang, p, rng),
                targets[split][lang],
                rng,
                seen_text,
                seen_skel,
                key=lambda toks: " ".join(t for t, _ in toks),
            )
            out[split].extend(sents)
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


# --------------------------------------------------------------------------
# Stats + README
# --------------------------------------------------------------------------

ORDERISH_RE = re.compile(r"^[#A-Z]*-?\d[\w-]*$")


def text_lang(text: str) -> str:
    """'zh' if the text has more CJK characters than Latin-script words, else 'en'."""
    cjk = len(CJK_RE.findall(text))
    latin_words = len(re.findall(r"[A-Za-z][A-Za-z0-9'\-]*", text))
    return "zh" if cjk > latin_words else "en"


def is_code_mixed(text: str) -> bool:
    if not CJK_RE.search(text):
        return False
    words = re.findall(r"[A-Za-z][A-Za-z0-9'\-]*", text)
    return any(len(w) >= 2 and not ORDERISH_RE.match(w) for w in words)


def entities(sent):
    ents, cur = [], None
    for tok, tag in sent:
        if tag.startswith("B-"):
            if cur:
                ents.append(cur)
            cur = [tag[2:], [tok]]
        elif tag.startswith("I-") and cur:
            cur[1].append(tok)
        else:
            if cur:
                ents.append(cur)
            cur = None
    if cur:
        ents.append(cur)
    return ents


def render_readme(intents, ner) -> str:
    L = []
    a = L.append
    a("# adaptune bundled demo data")
    a("")
    a("Two small **bilingual (English / Simplified Chinese) customer-service datasets** that ship")
    a("inside the `adaptune` package as default/demo data for quick experiments, tests and")
    a("tutorials. They are deliberately small: they exist to exercise pipelines end to end, not")
    a("to benchmark models.")
    a("")
    a("## Provenance and licence")
    a("")
    a("All text in this directory is **original**, written specifically for adaptune: the")
    a("sentence templates and slot values in `scripts/make_demo_data.py` were composed by hand for this")
    a("project and are **not copied or derived from any existing dataset**. The data is released")
    a("under the project's licence, **Apache-2.0**, and may be redistributed with the package.")
    a("")
    a("Person names, shop names, street addresses, product model names and order numbers are")
    a("fictional. A few well-known courier / e-commerce names (e.g. FedEx, DHL, 顺丰, 京东)")
    a("appear only as generic `ORG` examples and imply no affiliation.")
    a("")
    a("The files are generated deterministically (fixed seed) by")
    a("`scripts/make_demo_data.py` (stdlib only); run `python scripts/make_demo_data.py`")
    a("to regenerate them together with this README. Each template is assigned to exactly one")
    a("split, so train/dev/test share no sentence patterns; every text is unique across the whole")
    a("dataset (also after masking digits and punctuation).")
    a("")
    # ---- intents
    a("## 1. `intents/` — intent classification")
    a("")
    a("Files: `intents/train.jsonl`, `intents/dev.jsonl`, `intents/test.jsonl` (UTF-8, one JSON")
    a("object per line).")
    a("")
    a("| field | type | meaning |")
    a("|---|---|---|")
    a("| `text` | string | a customer message (English, Chinese, or code-mixed) |")
    a("| `label` | string | one of the 10 intent labels below |")
    a("")
    a("Example lines:")
    a("")
    a("```json")
    ex_en = next(r for r in intents["train"] if text_lang(r["text"]) == "en" and not CJK_RE.search(r["text"]))
    ex_zh = next(r for r in intents["train"] if text_lang(r["text"]) == "zh")
    a(json.dumps(ex_en, ensure_ascii=False))
    a(json.dumps(ex_zh, ensure_ascii=False))
    a("```")
    a("")
    a("Labels:")
    a("")
    a("| label | covers |")
    a("|---|---|")
    for lab in LABELS:
        a(f"| `{lab}` | {LABEL_DESCRIPTIONS[lab]} |")
    a("")
    a("Counts per split and label (computed from the files):")
    a("")
    a("| label | train | dev | test | total |")
    a("|---|---:|---:|---:|---:|")
    counts = {s: Counter(r["label"] for r in intents[s]) for s in SPLITS}
    for lab in LABELS:
        row = [counts[s][lab] for s in SPLITS]
        a(f"| `{lab}` | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    tot = [len(intents[s]) for s in SPLITS]
    a("| **total** | " + " | ".join(f"**{t}**" for t in tot) + f" | **{sum(tot)}** |")
    a("")
    a("Language mix (a row counts as `zh` when it has more CJK characters than Latin-script words;")
    a("*code-mixed* = contains CJK characters and at least one Latin word, order numbers excluded):")
    a("")
    a("| split | en | zh | code-mixed |")
    a("|---|---:|---:|---:|")
    for s in SPLITS:
        langs = Counter(text_lang(r["text"]) for r in intents[s])
        mixed = sum(is_code_mixed(r["text"]) for r in intents[s])
        a(f"| {s} | {langs['en']} | {langs['zh']} | {mixed} |")
    a("")
    a("Messages vary in register (polite, terse, angry), include order numbers (`A1024-77`,")
    a("`#48213`, `202405170031`, `SO-482913`), amounts in `$` and `¥`/`元`, occasional typos and")
    a("casual lower-case writing. Intent keywords are not reliable cues (many refund requests never")
    a('say "refund", greetings and other intents both start with "Hi" / "你好").')
    a("")
    # ---- ner
    a("## 2. `ner/` — named-entity recognition")
    a("")
    a("Files: `ner/train.conll`, `ner/dev.conll`, `ner/test.conll` (UTF-8, CoNLL style).")
    a("")
    a("* one token per line: `TOKEN TAG` separated by a single space; a blank line ends a sentence;")
    a("* tags are BIO / IOB2 (`B-X` starts every entity, `I-X` continues the same type, `O` outside);")
    a("* English is word-tokenised with punctuation as separate tokens (order numbers such as")
    a("  `A1024-77` and prices such as `12.99` stay whole);")
    a("* Chinese is **character-level** (one Hanzi or punctuation mark per line), except that runs")
    a("  of digits / Latin letters inside Chinese text are single tokens (`A1024-77`, `X5`, `88`).")
    a("")
    a("| type | meaning | examples |")
    a("|---|---|---|")
    a("| `PER` | customer or agent names | Emily Chen, 王芳 |")
    a("| `ORG` | companies, shops, couriers | Bluefin Electronics, 顺丰 |")
    a("| `LOC` | cities and street addresses | Toronto, 浦东新区张江路88号 |")
    a("| `PRODUCT` | named products (brand / model + optional category noun) | Lumo desk lamp, 小熊电饭煲 |")
    a("| `ORDER` | order numbers | A1024-77, 202405170031 |")
    a("")
    a('Bare generic nouns ("my phone", "耳机") are **not** tagged `PRODUCT`. The words around an')
    a('order number ("order", "订单号") are `O`. About a quarter of the names, shops, places and')
    a("products occur only in dev/test, so the evaluation splits contain unseen entities.")
    a("")
    a("Example (Chinese):")
    a("")
    a("```")
    ex = next(
        s
        for s in ner["train"]
        if text_lang("".join(t for t, _ in s)) == "zh" and len(entities(s)) >= 2 and len(s) <= 22
    )
    for t, g in ex:
        a(f"{t} {g}")
    a("```")
    a("")
    a("Counts per split (computed from the files):")
    a("")
    a("| split | sentences | en | zh | tokens | " + " | ".join(ENTITY_TYPES) + " | entities |")
    a("|---|" + "---:|" * (5 + len(ENTITY_TYPES)))
    for s in SPLITS:
        sents = ner[s]
        langs = Counter(text_lang(" ".join(t for t, _ in x)) for x in sents)
        ec = Counter(e[0] for x in sents for e in entities(x))
        ntok = sum(len(x) for x in sents)
        a(
            f"| {s} | {len(sents)} | {langs['en']} | {langs['zh']} | {ntok} | "
            + " | ".join(str(ec[t]) for t in ENTITY_TYPES)
            + f" | {sum(ec.values())} |"
        )
    a("")
    ent_hist = Counter(min(len(entities(x)), 3) for s in SPLITS for x in ner[s])
    a("Entities per sentence (all splits): " + ", ".join(f"{k}: {ent_hist[k]}" for k in range(4)) + ".")
    a("")
    a("## Loading")
    a("")
    a("```python")
    a("from importlib.resources import files")
    a("")
    a('data = files("adaptune.resources") / "data"')
    a('intents_train = (data / "intents" / "train.jsonl").read_text(encoding="utf-8")')
    a('ner_train = (data / "ner" / "train.conll").read_text(encoding="utf-8")')
    a("```")
    a("")
    return "\n".join(L)


def main() -> None:
    rng = random.Random(SEED)
    intents = build_intents(rng)
    ner = build_ner(rng)

    (HERE / "intents").mkdir(parents=True, exist_ok=True)
    (HERE / "ner").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with open(HERE / "intents" / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for r in intents[split]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        with open(HERE / "ner" / f"{split}.conll", "w", encoding="utf-8", newline="\n") as f:
            f.write("\n\n".join("\n".join(f"{t} {g}" for t, g in sent) for sent in ner[split]))
            f.write("\n")
    (HERE / "README.md").write_text(render_readme(intents, ner), encoding="utf-8")
    for split in SPLITS:
        print(split, len(intents[split]), "intent rows,", len(ner[split]), "ner sentences")


if __name__ == "__main__":
    main()
